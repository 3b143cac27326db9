"""A real OpenID Connect IdP for the JWT tests: tests/idp/server.mjs (oidc-provider) run under node.

    idp = Idp(workdir).start()
    token = idp.token("app-mfa")            # a JWT access token, fetched with authlib
    idp.restart()                            # same port and issuer, fresh signing keys
    twin = Idp(workdir2).start(keys_from=idp)  # another issuer signing with idp's keys
    idp.stop()

`start()` installs tests/idp's pinned npm packages (`npm ci`) when tests/idp/node_modules is
missing. A missing `node` or `npm` is an error with a clear message, never a skip.
"""

from __future__ import annotations

import base64
import json
import os
import pathlib
import selectors
import shutil
import subprocess
import time

import httpx
from authlib.integrations.httpx_client import OAuth2Client

import support

IDP_DIR = support.REPO / "tests" / "idp"
SERVER = IDP_DIR / "server.mjs"
# The resource indicator server.mjs defaults every client to (sending it explicitly also works).
RESOURCE = "urn:portcullis"
CLIENTS = ("app-mfa", "app-nomfa", "app-es256", "app-short", "app-other-aud", "app-limited")
START_TIMEOUT = 15.0
NPM_TIMEOUT = 300.0


def _tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise RuntimeError(
            f"`{name}` is not on PATH: the OIDC tests run a real IdP (tests/idp/server.mjs, "
            "oidc-provider) under Node.js 20 or later; install node and npm (Debian: "
            "`apt-get install nodejs npm`)"
        )
    return path


def ensure_node_modules() -> None:
    """`npm ci` in tests/idp, once: only when its node_modules is missing."""
    if (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
        return
    npm = _tool("npm")
    _tool("node")
    try:
        r = subprocess.run(
            [npm, "ci", "--prefix", str(IDP_DIR), "--no-audit", "--no-fund"],
            cwd=str(support.REPO),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=NPM_TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"`npm ci --prefix {IDP_DIR}` did not finish within {NPM_TIMEOUT:.0f}s:\n{e.stderr or ''}")
    if r.returncode != 0:
        raise RuntimeError(
            f"`npm ci --prefix {IDP_DIR}` failed with exit code {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        )


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def decode_jwt(token: str) -> tuple[dict, dict]:
    """(header, payload) of a compact JWS, unverified."""
    header, payload, _sig = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(payload))


class Idp:
    """One `node tests/idp/server.mjs` process on a free port; issuer `http://127.0.0.1:<port>`."""

    def __init__(self, workdir: pathlib.Path, name: str = "idp"):
        self.name = name
        self.dir = pathlib.Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.stderr_path = self.dir / f"{name}.stderr.log"
        self.keys_path = self.dir / f"{name}.jwks.json"  # the private JWKS in use (server.mjs --keys-out)
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self._metadata: dict | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- process control -------------------------------------------------------------------

    def start(self, port: int | None = None, keys_from: "Idp | None" = None, timeout: float = START_TIMEOUT) -> "Idp":
        """Start on `port` (default: a free one) with fresh keys, or the keys `keys_from` is
        using; returns once the IdP printed `ready`."""
        ensure_node_modules()
        node = _tool("node")
        fixed = port is not None
        attempts = 10 if fixed else 3  # the same port right after a stop may need a moment
        last = ""
        for _ in range(attempts):
            self.port = port if fixed else support.free_port()
            try:
                self._spawn(node, timeout, keys_from.keys_path if keys_from else None)
                return self
            except _PortBusy as e:
                last = str(e)
                time.sleep(0.2)
        raise RuntimeError(last)

    def _spawn(self, node: str, timeout: float, keys_in: pathlib.Path | None) -> None:
        self._metadata = None
        env = {k: v for k, v in os.environ.items() if not k.startswith("NODE_OPTIONS")}
        argv = [node, str(SERVER), "--port", str(self.port), "--keys-out", str(self.keys_path)]
        if keys_in is not None:
            argv += ["--keys-in", str(keys_in)]
        with open(self.stderr_path, "ab") as err:
            err.write(f"=== {' '.join(argv)}\n".encode())
            err.flush()
            # stdin stays an open pipe: the IdP exits when it closes (this process died).
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=str(IDP_DIR),
                env=env,
                preexec_fn=support._die_with_parent,
            )
        since = self.stderr_path.stat().st_size
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        buf = b""
        try:
            while time.monotonic() < deadline:
                if sel.select(timeout=0.1):
                    chunk = os.read(self.proc.stdout.fileno(), 4096)
                    if not chunk:
                        break  # stdout closed: the process is exiting
                    buf += chunk
                    if b"ready\n" in buf:
                        return
                elif self.proc.poll() is not None:
                    break
        finally:
            sel.close()
        self.stop()
        stderr = self.stderr_text()
        text = stderr[since:] if len(stderr) >= since else stderr
        if "EADDRINUSE" in text:
            raise _PortBusy(f"IdP `{self.name}` could not listen on 127.0.0.1:{self.port}:\n{text[-3000:]}")
        state = "did not print `ready`" if self.proc.returncode is None else f"exited with code {self.proc.returncode}"
        raise RuntimeError(
            f"IdP `{self.name}` ({' '.join(argv)}) {state} within {timeout:.0f}s.\n"
            f"stdout: {buf.decode(errors='replace')[-1000:]!r}\n--- node stderr ---\n{text[-4000:] or '(empty)'}"
        )

    def stop(self) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        for f in (p.stdin, p.stdout):
            try:
                if f:
                    f.close()
            except OSError:
                pass

    def restart(self) -> "Idp":
        """Stop and start again on the same port: same issuer, new signing keys (a key rotation)."""
        port = self.port
        self.stop()
        return self.start(port=port)

    # -- protocol --------------------------------------------------------------------------

    def metadata(self) -> dict:
        """The discovery document (cached until the next start)."""
        if self._metadata is None:
            r = httpx.get(self.issuer + "/.well-known/openid-configuration", timeout=support.TIMEOUT)
            r.raise_for_status()
            self._metadata = r.json()
        return self._metadata

    def jwks(self) -> dict:
        r = httpx.get(self.metadata()["jwks_uri"], timeout=support.TIMEOUT)
        r.raise_for_status()
        return r.json()

    def token_response(self, client_id: str, auth_method: str = "client_secret_basic", **params) -> dict:
        """The token endpoint's JSON for a client_credentials grant, fetched with authlib.
        `params` go into the request body (`scope="llm:proxy"`, `resource=RESOURCE`, ...)."""
        with OAuth2Client(
            client_id=client_id,
            client_secret=f"{client_id}-secret",
            token_endpoint_auth_method=auth_method,
            timeout=support.TIMEOUT,
        ) as oauth:
            return dict(oauth.fetch_token(self.metadata()["token_endpoint"], grant_type="client_credentials", **params))

    def token(self, client_id: str, **params) -> str:
        """A fresh JWT access token for `client_id` (secret `<id>-secret`)."""
        return self.token_response(client_id, **params)["access_token"]


class _PortBusy(RuntimeError):
    pass
