"""What the mock upstreams (mock_openai, mock_anthropic, mock_gemini, mock_cohere, mock_bedrock)
share: the recorded-request type, fixture loading, the answer texts, and a request handler base
that reads and records requests and writes JSON and chunked bodies.

The server lifecycle and request log are `mock_openai.MockUpstream`, which every mock subclasses;
what a mock sends (envelopes, headers, framing, errors) stays in its own module.
"""

from __future__ import annotations

import json
import pathlib
import socket
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

REPO = pathlib.Path(__file__).resolve().parents[2]


def compact(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# -- fixtures --------------------------------------------------------------------------------------


def load_json(fixtures: pathlib.Path, name: str):
    return json.loads((fixtures / name).read_text(encoding="utf-8"))


def sse_events(raw: str) -> list:
    """The (event name or None, payload) pairs of an SSE body; a payload is the parsed JSON of its
    `data:` lines, or the string "[DONE]". Blocks without `data:` lines are skipped."""
    out = []
    for block in raw.replace("\r\n", "\n").split("\n\n"):
        event, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        if not data:
            continue
        payload = "\n".join(data)
        out.append((event, payload if payload == "[DONE]" else json.loads(payload)))
    return out


def load_sse(fixtures: pathlib.Path, name: str) -> list:
    """`sse_events` of a recorded SSE fixture."""
    return sse_events((fixtures / name).read_text(encoding="utf-8"))


# -- answers ---------------------------------------------------------------------------------------


def reply_text(last_user_text: str) -> str:
    """What the default model answers (tests compare against this)."""
    return "Mock upstream reply to: " + last_user_text[:100]


def tool_result_reply(result_text: str) -> str:
    """What the native-provider mocks answer to a tool result (mock_openai words it differently)."""
    return "Tool said: " + result_text[:200]


def text_of(content) -> str:
    """The text of a message content that is a string or a list of typed blocks (`type: text`)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


def stream_pieces(text: str) -> list:
    """`text` split after each space into stream deltas that join back to it."""
    pieces = [w + " " for w in text.split(" ")]
    pieces[-1] = pieces[-1][:-1]
    return pieces


# -- requests --------------------------------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str  # path and query, exactly as received
    headers: list  # [(name, value)] in received order
    body: bytes
    at: float = field(default_factory=time.monotonic)

    def header(self, name: str):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_all(self, name: str) -> list:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def json(self):
        return json.loads(self.body)

    def summary(self, body_chars: int = 300) -> str:
        hdrs = ", ".join(f"{k}: {v}" for k, v in self.headers)
        body = self.body[:body_chars].decode("utf-8", "replace")
        more = f" ... ({len(self.body)} bytes)" if len(self.body) > body_chars else ""
        return f"{self.method} {self.path}\n    headers: {hdrs}\n    body: {body}{more}"


# -- handler ---------------------------------------------------------------------------------------

ABORT = object()  # an item of `MockHandler._send_chunked`'s chunks: cut the connection there


class MockHandler(BaseHTTPRequestHandler):
    """Base of the mocks' request handlers. A subclass sets `server_version`, and the headers
    every answer carries as `COMMON_HEADERS` (or overrides `_common_headers` when they vary);
    `JSON_TYPE` is the Content-Type of `_json` answers."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the gateway's pooled connections expect
    disable_nagle_algorithm = True
    sys_version = ""
    JSON_TYPE = "application/json"
    COMMON_HEADERS: list = []

    def log_message(self, format, *args):  # noqa: A002 - quiet; requests are recorded instead
        pass

    @property
    def upstream(self):
        return self.server.upstream  # type: ignore[attr-defined]

    # -- request -------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    # trailers until an empty line
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
            return b"".join(parts)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _record(self) -> Recorded:
        """Read the body (of a POST, PUT or PATCH) and record the request."""
        body = self._read_body() if self.command in ("POST", "PUT", "PATCH") else b""
        rec = Recorded(self.command, self.path, list(self.headers.items()), body)
        self.upstream.record(rec)
        return rec

    # -- wire ----------------------------------------------------------------------------------

    def _common_headers(self):
        for k, v in self.COMMON_HEADERS:
            self.send_header(k, v)

    def _json(self, status: int, body: bytes, extra=()):
        """`body` with Content-Type `JSON_TYPE` and Content-Length, the common headers, then `extra`."""
        self.send_response(status)
        self.send_header("Content-Type", self.JSON_TYPE)
        self.send_header("Content-Length", str(len(body)))
        self._common_headers()
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _send_chunked(self, headers: list, chunks):
        """A 200 with `headers` (they include Transfer-Encoding: chunked) and the common headers,
        then each item of `chunks` (bytes) as one HTTP chunk, flushed as written, and the last
        chunk. An `ABORT` item cuts the connection instead (a provider dying mid-stream)."""
        self.send_response(200)
        for k, v in headers:
            self.send_header(k, v)
        self._common_headers()
        self.end_headers()
        self.wfile.flush()
        try:
            for chunk in chunks:
                if chunk is ABORT:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


def sse_headers(content_type: str = "text/event-stream; charset=utf-8") -> list:
    """The headers of an SSE answer for `MockHandler._send_chunked`."""
    return [("Content-Type", content_type), ("Transfer-Encoding", "chunked"), ("Cache-Control", "no-cache")]


def run_manually(mock, banner: str):
    """A module's `__main__` (`python tests/clients/mock_<name>.py`): print `banner` and serve the
    started `mock` until Ctrl-C."""
    print(banner)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        mock.stop()
