"""Helpers shared by the client tests: gateway process control, key material, assertions."""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import signal
import socket
import subprocess
import time
import uuid

import httpx
import openai

REPO = pathlib.Path(__file__).resolve().parents[2]

# Virtual keys of the test config (only their SHA-256 goes into the config).
KEY_ALL = "pc-test-all"
KEY_MOCKONLY = "pc-test-mockonly"
KEY_CAPPED = "pc-test-capped"  # group `interns`: routing capped at the medium tier
KEY_OPENAI_MODELS = "pc-test-openai-models"  # policy allowed_models = ["openai:*"]
KEY_OPENAI_MINI = "pc-test-openai-mini"  # policy allowed_models = ["openai:gpt-4o-mini"]
# Metering keys (test_metering.py); each has its own counters.
KEY_RATE_LIMITED = "pc-test-rate-limited"  # 3 requests per minute
KEY_TOKEN_LIMITED = "pc-test-token-limited"  # 300 tokens per minute
KEY_BUDGET = "pc-test-budget"  # $0.03 per day
KEY_TEAM_A = "pc-test-team-a"  # group `metered-team`: 3 requests per minute for the group
KEY_TEAM_B = "pc-test-team-b"
KEY_USAGE = "pc-test-usage"  # $5 per month, for /v1/usage
# What the gateway must inject upstream; callers never send it.
OPENAI_UPSTREAM_KEY = "sk-upstream-openai-test"
GROQ_UPSTREAM_KEY = "gsk-upstream"
AZURE_UPSTREAM_KEY = "az-key"
# A provider's own key a caller brings on the pass-through route (forwarded unchanged).
CALLER_OWN_OPENAI_KEY = "sk-caller-own-openai-key-1234"

MAX_BODY_BYTES = 8 * 1024 * 1024
TIMEOUT = 20.0  # per request: a wedged gateway fails a test instead of hanging the suite


def sha256_hex(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def marker() -> str:
    """A unique string to put in a request so the test can find it at the upstream."""
    return "mk-" + uuid.uuid4().hex[:16]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def gateway_binary() -> pathlib.Path:
    env = os.environ.get("PORTCULLIS_BIN")
    p = pathlib.Path(env) if env else REPO / "target" / "debug" / "portcullis"
    if not p.is_file():
        raise RuntimeError(
            f"gateway binary not found at {p}: run `cargo build` (or `cargo test --test clients`, "
            "which sets PORTCULLIS_BIN), or set PORTCULLIS_BIN to the binary"
        )
    return p


def server_section(port: int, admin_port: int, workdir) -> str:
    """The `[server]` table of a test gateway's config: loopback ports, files under `workdir`."""
    return f"""[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
public_url = "http://127.0.0.1:{port}"
threads = 2
graceful_shutdown_seconds = 1
pid_file = "{workdir}/portcullis.pid"
upgrade_sock = "{workdir}/upgrade.sock"
"""


class Gateway:
    """One `portcullis serve` process on free ports, with its log captured to a file."""

    def __init__(self, name: str, workdir: pathlib.Path, render_config, env: dict | None = None):
        self.name = name
        self.extra_env = env or {}  # added to the process environment (e.g. a secrets key)
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.render_config = render_config  # (listen_port, admin_port, dir) -> TOML text
        self.log_path = self.dir / "gateway.log"
        self.config_path = self.dir / "portcullis.toml"
        self.proc: subprocess.Popen | None = None
        self.port = self.admin_port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_tail(self, lines: int = 60, since: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return "(no log)"
        tail = text.splitlines()[-lines:]
        return "\n".join(tail) if tail else "(nothing logged)"

    def start(self, attempts: int = 3, timeout: float = 20.0):
        binary = gateway_binary()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")}
        env.update(self.extra_env)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        last_error = ""
        for attempt in range(attempts):
            self.port, self.admin_port = free_port(), free_port()
            while self.admin_port == self.port:
                self.admin_port = free_port()
            self.config_path.write_text(self.render_config(self.port, self.admin_port, self.dir))
            with open(self.log_path, "ab") as log:
                log.write(f"=== attempt {attempt + 1}: {binary} serve --config {self.config_path}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(
                    [str(binary), "serve", "--config", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=str(self.dir),
                    preexec_fn=_die_with_parent,
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    r = httpx.get(self.base + "/health", timeout=1.0)
                    if r.status_code == 200:
                        return self
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            if self.proc.poll() is None:
                self.stop()
                raise RuntimeError(
                    f"gateway `{self.name}` did not answer 200 on GET {self.base}/health within {timeout:.0f}s.\n"
                    f"config: {self.config_path}\n--- gateway log ---\n{self.log_tail(120)}"
                )
            log = self.log_tail(120)
            last_error = f"gateway `{self.name}` exited with code {self.proc.returncode} during start-up.\n" f"config: {self.config_path}\n--- gateway log ---\n{log}"
            if not re.search(r"address (already )?in use|AddrInUse|os error 98", log, re.I):
                break  # not a port race: retrying will not help
        raise RuntimeError(last_error)

    def stop(self):
        p = self.proc
        if p is None or p.poll() is not None:
            return
        # Pingora: SIGINT is the fast shutdown (SIGTERM waits for the graceful period).
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _die_with_parent():
    """Linux: the gateway gets SIGKILL if pytest dies without cleaning up (killed on timeout)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


# -- clients -------------------------------------------------------------------------------------


def sdk(base_url: str, api_key: str = KEY_ALL, **kw) -> openai.OpenAI:
    """The official SDK, pointed at the gateway, never retrying (errors must surface as-is)."""
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=TIMEOUT, **kw)


def auth(key: str = KEY_ALL) -> dict:
    return {"Authorization": f"Bearer {key}"}


# -- assertions ----------------------------------------------------------------------------------


def assert_error_shape(body, status: int | None = None, code: str | None = None, param: str | None = None) -> dict:
    """`body` is the parsed JSON of an error answer: OpenAI's `{"error":{message,type,code,param}}`."""
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"not the OpenAI error shape: {body!r}"
    err = body["error"]
    for k in ("message", "type", "code", "param"):
        assert k in err, f"error body lacks `{k}`: {body!r}"
    assert isinstance(err["message"], str) and err["message"], f"empty error message: {body!r}"
    assert isinstance(err["type"], str) and err["type"], f"empty error type: {body!r}"
    if code is not None:
        assert err["code"] == code, f"expected error code {code!r}, got {err['code']!r}: {body!r}"
    if param is not None:
        assert err["param"] == param, f"expected error param {param!r}, got {err['param']!r}: {body!r}"
    return err


def error_json(exc: openai.APIStatusError) -> dict:
    try:
        return exc.response.json()
    except Exception as e:  # pragma: no cover - reported as a failure
        raise AssertionError(f"error response is not JSON ({e}): {exc.response.status_code} {exc.response.text[:500]!r}")


def assert_gateway_serves(gw: Gateway, upstream) -> None:
    """After any error the gateway must still serve a normal chat through a real upstream."""
    assert gw.alive(), f"the gateway process died (exit code {gw.proc.returncode})"
    m = marker()
    client = sdk(gw.base + "/v1")
    r = client.chat.completions.create(model="openai:gpt-4o-mini", messages=[{"role": "user", "content": f"still alive? {m}"}])
    assert r.choices[0].message.content == f"Mock upstream reply to: still alive? {m}", r
    upstream.find(m)
    r = client.chat.completions.create(model="mock:echo", messages=[{"role": "user", "content": f"echo {m}"}])
    assert r.choices[0].message.content.endswith(f"You said: echo {m}"), r


def raw_sse_events(body: bytes) -> list[str]:
    """The `data:` payloads of an SSE body, checking the framing on the way."""
    text = body.decode("utf-8")
    assert text.endswith("\n\n"), f"SSE body does not end with a blank line: {text[-200:]!r}"
    events = []
    for block in text.split("\n\n")[:-1]:
        lines = [l for l in block.split("\n") if l and not l.startswith(":")]
        if not lines:
            continue
        datas = [l[len("data: "):] for l in lines if l.startswith("data: ")]
        assert datas, f"SSE event without data: {block!r}"
        events.append("\n".join(datas))
    return events
