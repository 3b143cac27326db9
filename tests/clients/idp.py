"""A real OpenID Connect IdP for the JWT tests: tests/idp/server.mjs (oidc-provider) run under node.

    idp = Idp(workdir).start()
    token = idp.token("app-mfa")            # a JWT access token, fetched with authlib
    idp.restart()                            # same port and issuer, fresh signing keys
    twin = Idp(workdir2).start(keys_from=idp)  # another issuer signing with idp's keys
    idp.stop()

User sign-in (authorization code) through the IdP's `portcullis-login` client, browser-less:

    idp = Idp(workdir).start(rp_redirects=[gw.base + "/api/auth/oauth2/callback"])
    with Browser() as b:
        page = b.authorize(authorize_url, login="alice", mfa=True, stop_at=app_redirect_uri)
        done = b.consent(page, "allow")          # the gateway's consent form, posted
        params = parse_redirect(done)            # {"code": ..., "state": ..., "iss": ...}

`start()` installs tests/idp's pinned npm packages (`npm ci`) when tests/idp/node_modules is
missing. A missing `node` or `npm` is an error with a clear message, never a skip.
"""

from __future__ import annotations

import base64
import html.parser
import json
import os
import pathlib
import selectors
import shutil
import subprocess
import time
import urllib.parse

import httpx
from authlib.integrations.httpx_client import OAuth2Client

import support

IDP_DIR = support.REPO / "tests" / "idp"
SERVER = IDP_DIR / "server.mjs"
# The resource indicator server.mjs defaults every client to (sending it explicitly also works).
RESOURCE = "urn:portcullis"
CLIENTS = ("app-mfa", "app-nomfa", "app-es256", "app-short", "app-other-aud", "app-limited")
# The confidential client users sign in through (only registered when start() got rp_redirects).
LOGIN_CLIENT_ID = "portcullis-login"
LOGIN_CLIENT_SECRET = "portcullis-login-secret"
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
        self.rp_redirects: list[str] = []
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

    def start(
        self,
        port: int | None = None,
        keys_from: "Idp | None" = None,
        timeout: float = START_TIMEOUT,
        rp_redirects: list[str] | None = None,
    ) -> "Idp":
        """Start on `port` (default: a free one) with fresh keys, or the keys `keys_from` is
        using; returns once the IdP printed `ready`. `rp_redirects`: the redirect URIs of the
        `portcullis-login` sign-in client (none: that client does not exist); kept by restart()."""
        if rp_redirects is not None:
            self.rp_redirects = list(rp_redirects)
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
        for uri in self.rp_redirects:
            argv += ["--rp-redirect", uri]
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


# -- a browser-less user agent for authorization code flows ------------------------------------


class _Forms(html.parser.HTMLParser):
    """Every <form> of a page: its attributes, its named <input>s and its <button>s."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.forms: list[dict] = []
        self._form: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = {k: (v if v is not None else "") for k, v in attrs}
        if tag == "form":
            self._form = {"attrs": a, "inputs": [], "buttons": []}
            self.forms.append(self._form)
        elif self._form is not None and tag == "input":
            self._form["inputs"].append(a)
        elif self._form is not None and tag == "button":
            self._form["buttons"].append(a)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag == "form":
            self._form = None


def html_forms(text: str) -> list[dict]:
    """The forms of an HTML page: [{"attrs": {...}, "inputs": [{...}], "buttons": [{...}]}]."""
    p = _Forms()
    p.feed(text)
    p.close()
    return p.forms


def _is_html(resp: httpx.Response) -> bool:
    return resp.headers.get("content-type", "").split(";")[0].strip().lower() == "text/html"


def idp_login_form(resp: httpx.Response) -> dict | None:
    """The IdP's sign-in form if `resp` is the IdP login page (server.mjs), else None."""
    if resp.status_code != 200 or not _is_html(resp):
        return None
    for form in html_forms(resp.text):
        action = form["attrs"].get("action", "")
        names = {i.get("name") for i in form["inputs"]}
        if action.startswith("/interaction/") and action.endswith("/login") and {"login", "password"} <= names:
            return form
    return None


def parse_redirect(resp: httpx.Response) -> dict:
    """The query parameters of a redirect's Location (one value each; a repeated one is an error)."""
    loc = resp.headers.get("location")
    assert loc, f"not a redirect: {resp.status_code} {resp.text[:500]!r}"
    pairs = urllib.parse.parse_qsl(urllib.parse.urlsplit(loc).query, keep_blank_values=True)
    out: dict[str, str] = {}
    for k, v in pairs:
        assert k not in out, f"parameter {k!r} appears twice in {loc!r}"
        out[k] = v
    return out


class Browser(httpx.Client):
    """A user agent with a cookie jar that follows redirects by hand (never automatically).

    `authorize()` walks an authorization request through the gateway and the IdP, signing in on
    the IdP's login page, and returns the first answer that is something else: the gateway's
    consent page, a redirect to the app (`stop_at`), or an error. `history` lists every
    (method, URL, status) it went through, for assertion messages.
    """

    MAX_HOPS = 25

    def __init__(self, **kw):
        kw.setdefault("timeout", support.TIMEOUT)
        kw["follow_redirects"] = False
        super().__init__(**kw)
        self.history: list[tuple[str, str, int]] = []

    def _send(self, method: str, url: str, **kw) -> httpx.Response:
        r = self.request(method, url, **kw)
        self.history.append((method, str(url), r.status_code))
        return r

    def trail(self) -> str:
        return "\n".join(f"  {m} {u} -> {s}" for m, u, s in self.history)

    def authorize(
        self,
        url: str,
        login: str = "alice",
        mfa: bool = True,
        password: str = "pw",
        stop_at: str | list[str] | tuple[str, ...] | None = None,
    ) -> httpx.Response:
        """GET `url`, follow 302/303s (absolute or relative) and sign in at the IdP once per
        login page; stop at (without fetching) a redirect whose Location starts with `stop_at`
        (a prefix or several), or at any non-http(s) Location."""
        stops = (stop_at,) if isinstance(stop_at, str) else tuple(stop_at or ())
        resp = self._send("GET", url)
        posted: set[str] = set()
        for _ in range(self.MAX_HOPS):
            if resp.status_code in (302, 303) and resp.headers.get("location"):
                target = urllib.parse.urljoin(str(resp.url), resp.headers["location"])
                if any(target.startswith(p) for p in stops) or urllib.parse.urlsplit(target).scheme not in ("http", "https"):
                    return resp
                resp = self._send("GET", target)
                continue
            form = idp_login_form(resp)
            if form is None:
                return resp
            action = urllib.parse.urljoin(str(resp.url), form["attrs"]["action"])
            if action in posted:
                return resp  # the form again after signing in: refused (wrong password)
            posted.add(action)
            data = {"login": login, "password": password}
            if mfa:
                data["mfa"] = "1"
            resp = self._send("POST", action, data=data)
        raise AssertionError(f"more than {self.MAX_HOPS} hops without an answer:\n{self.trail()}")

    def consent(self, page: httpx.Response, decision: str = "allow", **overrides: str) -> httpx.Response:
        """Post the consent form of `page` (the gateway's) with `decision` (the value of the
        `decision` button); `overrides` replace or add form fields (e.g. `csrf="x"`). Returns the
        answer without following it."""
        assert page.status_code == 200 and _is_html(page), f"not a consent page: {page.status_code} {page.headers.get('content-type')} {page.text[:500]!r}"
        forms = [f for f in html_forms(page.text) if any(b.get("name") == "decision" for b in f["buttons"])]
        assert len(forms) == 1, f"expected one form with `decision` buttons, found {len(forms)}: {page.text[:2000]!r}"
        form = forms[0]
        assert form["attrs"].get("method", "get").lower() == "post", form
        values = {b.get("value") for b in form["buttons"] if b.get("name") == "decision"}
        assert decision in values, f"no decision button with value {decision!r}: {form}"
        data: dict[str, str] = {}
        for i in form["inputs"]:
            name = i.get("name")
            if not name or i.get("type", "text").lower() in ("submit", "button", "image", "reset"):
                continue
            if i.get("type", "").lower() in ("checkbox", "radio") and "checked" not in i:
                continue
            data[name] = i.get("value", "")
        data["decision"] = decision
        data.update(overrides)
        action = urllib.parse.urljoin(str(page.url), form["attrs"].get("action") or str(page.url))
        return self._send("POST", action, data=data)
