"""A mock Anthropic Messages upstream that speaks the real wire format, for the client test suite.

Answers are built from the recorded transcripts in `fixtures/anthropic/` (same message envelope,
content block shapes, `event:` names, `ping` after the first block start, padding spaces before
the closing brace of `data:` JSON, cumulative `message_delta.usage`, error bodies with
`request_id`), so the gateway under test sees what it will see from api.anthropic.com. Every
request is recorded (method, path with query, headers, raw body) for the tests to inspect.

Auth and versioning are checked like the real API: the key, sent as `x-api-key` (what the gateway
sends) or `Authorization: Bearer` (what the anthropic 2.x SDK sends), must be `test-anthropic-key`
(401 `authentication_error` otherwise); `anthropic-version` must be present and a known date (400
`invalid_request_error` otherwise), and with `2026-10-21` the removed sampling parameters
(`temperature`, `top_p`, `top_k`) are a 400.

Behaviour by requested model:

    default          text "Mock upstream reply to: <last user text>"; with `tools` and a last
                     turn that is not a tool result: a `tool_use` block for the first tool with
                     input {"city": "Paris"} (or the first schema property set to "Paris");
                     when the last turn carries a `tool_result`: text "Tool said: <result text>".
                     With `thinking` enabled, a thinking block (recorded text and signature)
                     comes first.
    slow-stream      streams 6 text deltas 0.4 s apart
    fail-429         429 `rate_limit_error` (recorded body) with `retry-after: 7`
    fail-500         500 `api_error`
    fail-overloaded  529 `overloaded_error`
    break-stream     streams 3 text deltas, then drops the connection (no message_stop)

Routes: `POST /v1/messages`, `GET /v1/models`; anything else is Anthropic's 404.
"""

from __future__ import annotations

import copy
import functools
import json
import time
from urllib.parse import urlsplit

import mock_common
from mock_common import ABORT, REPO, MockHandler, compact, reply_text, sse_headers, stream_pieces, text_of, tool_result_reply
from mock_openai import MockUpstream

FIXTURES = REPO / "fixtures" / "anthropic"

API_KEY = "test-anthropic-key"
# 2023-06-01 is what the gateway sends; 2026-10-21 is what the pinned SDK (anthropic 2.x) sends.
VERSIONS = ("2023-06-01", "2026-10-21")
# Request fields API version 2026-10-21 rejects (400) even at their default values.
REMOVED_IN_2026 = ("temperature", "top_p", "top_k")
SLOW_CHUNKS = 6
SLOW_INTERVAL = 0.4
BREAK_AFTER = 3  # text deltas `break-stream` sends before dropping the connection


load_json = functools.partial(mock_common.load_json, FIXTURES)
# The (event name, data payload) pairs of a recorded SSE body.
load_sse = functools.partial(mock_common.load_sse, FIXTURES)


# Recorded shapes, loaded once.
TEXT_MESSAGE = load_json("messages-text.json")
TOOL_MESSAGE = load_json("messages-tool-use.json")
THINKING_MESSAGE = load_json("messages-thinking.json")
TEXT_STREAM = load_sse("messages-stream-text.sse")
TOOL_STREAM = load_sse("messages-stream-tool-use.sse")
THINKING_STREAM = load_sse("messages-stream-thinking.sse")
ERROR_429 = load_json("error-429-rate-limit.json")
THINKING_BLOCK = THINKING_MESSAGE["content"][0]  # {"type":"thinking","thinking","signature"}


def _event(stream: list, type_: str) -> dict:
    return copy.deepcopy(next(d for _, d in stream if d.get("type") == type_))


def _delta(stream: list, delta_type: str) -> dict:
    return copy.deepcopy(
        next(d for _, d in stream if d.get("type") == "content_block_delta" and d["delta"]["type"] == delta_type)
    )


def last_tool_result(messages: list):
    """The text of the last turn's tool_result blocks, or None when it has none."""
    if not messages or messages[-1].get("role") != "user" or not isinstance(messages[-1].get("content"), list):
        return None
    results = [b for b in messages[-1]["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]
    if not results:
        return None
    return " ".join(text_of(b.get("content")) for b in results)


def tool_input(tool: dict) -> dict:
    """{"city": "Paris"}, or the first schema property set to "Paris" when there is no `city`."""
    props = ((tool.get("input_schema") or {}).get("properties")) or {}
    if not props or "city" in props:
        return {"city": "Paris"}
    return {next(iter(props)): "Paris"}


def split_json(text: str, n: int = 4) -> list:
    """Fragments the way Anthropic streams tool input: an empty one first, then pieces."""
    step = max(1, -(-len(text) // n))
    return [""] + [text[i : i + step] for i in range(0, len(text), step)]


class _Handler(MockHandler):
    server_version = "mock-anthropic"

    def _authorized(self) -> bool:
        key = self.headers.get("x-api-key")
        auth = self.headers.get("authorization") or ""
        if key is None and auth.lower().startswith("bearer "):
            key = auth[len("bearer ") :]
        if key is None:
            self._error(401, "authentication_error", "x-api-key header is required")
            return False
        if key != API_KEY:
            self._error(401, "authentication_error", "invalid x-api-key")
            return False
        version = self.headers.get("anthropic-version")
        if version is None:
            self._error(400, "invalid_request_error", "anthropic-version: header is required")
            return False
        if version not in VERSIONS:
            self._error(400, "invalid_request_error", f"anthropic-version: invalid version {version!r}")
            return False
        return True

    def do_GET(self):
        rec = self._record()
        if urlsplit(rec.path).path != "/v1/models":
            return self._not_found()
        if not self._authorized():
            return
        models = [
            {"type": "model", "id": "claude-sonnet-4-5-20250929", "display_name": "Claude Sonnet 4.5", "created_at": "2025-09-29T00:00:00Z"},
            {"type": "model", "id": "claude-haiku-4-5-20251001", "display_name": "Claude Haiku 4.5", "created_at": "2025-10-15T00:00:00Z"},
        ]
        body = {"data": models, "has_more": False, "first_id": models[0]["id"], "last_id": models[-1]["id"]}
        self._json(200, compact(body).encode())

    def do_POST(self):
        rec = self._record()
        if urlsplit(rec.path).path != "/v1/messages":
            return self._not_found()
        if not self._authorized():
            return
        try:
            req = json.loads(rec.body)
            assert isinstance(req, dict)
        except Exception:
            return self._error(400, "invalid_request_error", "There was an error parsing the body of your request.")
        for field in ("model", "max_tokens", "messages"):
            if field not in req:
                return self._error(400, "invalid_request_error", f"{field}: Field required")
        if self.headers.get("anthropic-version") == "2026-10-21":
            for field in REMOVED_IN_2026:
                if field in req:
                    return self._error(400, "invalid_request_error", f"{field}: Extra inputs are not permitted")
        model = str(req["model"])
        stream = req.get("stream") is True
        messages = req.get("messages") or []
        tools = req.get("tools") or []
        thinking = (req.get("thinking") or {}).get("type") == "enabled"
        last_user = next((text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        if thinking and (why := missing_thinking_block(messages)):
            return self._error(400, "invalid_request_error", why)

        if model == "fail-429":
            body = dict(ERROR_429, request_id=self.upstream.next_id("req"))
            return self._json(
                429,
                compact(body).encode(),
                extra=[
                    ("retry-after", "7"),
                    ("x-should-retry", "true"),
                    ("anthropic-ratelimit-requests-limit", "50"),
                    ("anthropic-ratelimit-requests-remaining", "0"),
                    ("anthropic-ratelimit-requests-reset", "2026-01-01T00:00:07Z"),
                ],
            )
        if model == "fail-500":
            return self._error(500, "api_error", "Internal server error", extra=[("x-should-retry", "true")])
        if model == "fail-overloaded":
            return self._error(529, "overloaded_error", "Overloaded", extra=[("x-should-retry", "true")])
        if model == "slow-stream":
            pieces = [f"slow{i} " for i in range(SLOW_CHUNKS)]
            return self._sse(self._text_events(model, pieces, thinking=False), delay_between_deltas=SLOW_INTERVAL)
        if model == "break-stream":
            pieces = [f"part{i} " for i in range(BREAK_AFTER + 3)]
            events = self._text_events(model, pieces, thinking=False)
            first_delta = next(i for i, (name, _) in enumerate(events) if name == "content_block_delta")
            return self._sse(events, abort_after=first_delta + BREAK_AFTER)

        result = last_tool_result(messages)
        if result is None and tools:
            tool = tools[0]
            args = tool_input(tool)
            if stream:
                return self._sse(self._tool_events(model, tool["name"], args, thinking))
            body = copy.deepcopy(TOOL_MESSAGE)
            body["id"], body["model"] = self.upstream.next_id(), model
            block = body["content"][0]
            block["id"], block["name"], block["input"] = self.upstream.next_id("toolu"), tool["name"], args
            if thinking:
                body["content"].insert(0, copy.deepcopy(THINKING_BLOCK))
            return self._json(200, compact(body).encode())

        text = tool_result_reply(result) if result is not None else reply_text(last_user)
        if stream:
            return self._sse(self._text_events(model, stream_pieces(text), thinking))
        body = copy.deepcopy(TEXT_MESSAGE)
        body["id"], body["model"] = self.upstream.next_id(), model
        body["content"] = ([copy.deepcopy(THINKING_BLOCK)] if thinking else []) + [{"type": "text", "text": text}]
        return self._json(200, json.dumps(body, indent=2, ensure_ascii=False).encode())

    # -- event builders (recorded envelopes) ---------------------------------------------------

    def _start(self, stream: list, model: str) -> dict:
        start = _event(stream, "message_start")
        start["message"]["id"], start["message"]["model"] = self.upstream.next_id(), model
        return start

    def _thinking_events(self, index: int) -> list:
        """A thinking block as recorded: start, thinking deltas, signature delta, stop."""
        start = _event(THINKING_STREAM, "content_block_start")
        start["index"] = index
        out = [("content_block_start", start)]
        for piece in ("Let me ", "think."):
            d = _delta(THINKING_STREAM, "thinking_delta")
            d["index"], d["delta"]["thinking"] = index, piece
            out.append(("content_block_delta", d))
        sig = _delta(THINKING_STREAM, "signature_delta")
        sig["index"] = index
        out += [("content_block_delta", sig), ("content_block_stop", {"type": "content_block_stop", "index": index})]
        return out

    def _text_events(self, model: str, pieces: list, thinking: bool) -> list:
        base = TEXT_STREAM
        out = [("message_start", self._start(base, model))]
        index = 0
        if thinking:
            out += self._thinking_events(0)
            index = 1
        start = _event(base, "content_block_start")
        start["index"] = index
        out += [("content_block_start", start), ("ping", {"type": "ping"})]
        for p in pieces:
            d = _delta(base, "text_delta")
            d["index"], d["delta"]["text"] = index, p
            out.append(("content_block_delta", d))
        stop = _event(base, "content_block_stop")
        stop["index"] = index
        out += [("content_block_stop", stop), ("message_delta", _event(base, "message_delta"))]
        out.append(("message_stop", _event(base, "message_stop")))
        return out

    def _tool_events(self, model: str, name: str, args: dict, thinking: bool) -> list:
        base = TOOL_STREAM
        out = [("message_start", self._start(base, model))]
        index = 0
        if thinking:
            out += self._thinking_events(0)
            index = 1
        start = _event(base, "content_block_start")
        start["index"] = index
        start["content_block"]["id"], start["content_block"]["name"] = self.upstream.next_id("toolu"), name
        out += [("content_block_start", start), ("ping", {"type": "ping"})]
        for frag in split_json(compact(args)):
            d = _delta(base, "input_json_delta")
            d["index"], d["delta"]["partial_json"] = index, frag
            out.append(("content_block_delta", d))
        stop = _event(base, "content_block_stop")
        stop["index"] = index
        out += [("content_block_stop", stop), ("message_delta", _event(base, "message_delta"))]
        out.append(("message_stop", _event(base, "message_stop")))
        return out

    # -- wire ----------------------------------------------------------------------------------

    def _common_headers(self):
        self.send_header("request-id", self.upstream.next_id("req"))
        self.send_header("anthropic-organization-id", "00000000-0000-0000-0000-000000000000")

    def _error(self, status: int, typ: str, message: str, extra=()):
        body = {"type": "error", "error": {"type": typ, "message": message}, "request_id": self.upstream.next_id("req")}
        self._json(status, compact(body).encode(), extra)

    def _not_found(self):
        self._error(404, "not_found_error", "Not Found")

    @staticmethod
    def _frame(name: str, data: dict, n: int) -> bytes:
        """One event as Anthropic frames it: compact JSON with padding spaces before the last
        brace (the recorded `ping` keeps its own spacing)."""
        if data == {"type": "ping"}:
            payload = '{"type": "ping"}'
        else:
            payload = compact(data)[:-1] + " " * (1 + (n * 7) % 15) + "}"
        return f"event: {name}\ndata: {payload}\n\n".encode()

    def _sse(self, events: list, delay_between_deltas: float = 0.0, abort_after: int | None = None):
        """Send events one HTTP chunk each, flushed as written. With `abort_after`, the connection
        is cut after that many events (a provider dying mid-stream)."""
        self._send_chunked(sse_headers(), self._sse_chunks(events, delay_between_deltas, abort_after))

    def _sse_chunks(self, events: list, delay_between_deltas: float, abort_after: int | None):
        deltas = 0
        for n, (name, data) in enumerate(events):
            if abort_after is not None and n == abort_after:
                yield ABORT
                return
            if name == "content_block_delta":
                if delay_between_deltas and deltas:
                    time.sleep(delay_between_deltas)
                deltas += 1
            yield self._frame(name, data, n)


# The signatures this mock hands out (whole answers, streams): only those validate.
ISSUED_SIGNATURES = {
    THINKING_BLOCK["signature"],
    next(d["delta"]["signature"] for name, d in THINKING_STREAM if name == "content_block_delta"
         and d["delta"].get("type") == "signature_delta"),
}


def missing_thinking_block(messages: list) -> str | None:
    """Anthropic's rule with thinking on: an assistant turn that used a tool must be sent back
    starting with its signed thinking block (the error text is the API's)."""
    for i, m in enumerate(messages):
        content = m.get("content")
        if m.get("role") != "assistant" or not isinstance(content, list):
            continue
        if any(b.get("type") == "tool_use" for b in content):
            first = content[0] if content else {}
            if first.get("type") not in ("thinking", "redacted_thinking") or (
                    first.get("type") == "thinking" and first.get("signature") not in ISSUED_SIGNATURES):
                return (f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                        f"`{first.get('type')}`. When `thinking` is enabled, a final `assistant` message must start "
                        "with a thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks).")
    return None


class MockAnthropic(MockUpstream):
    """The server: `mock_openai.MockUpstream` with the Anthropic handler and ids."""

    HANDLER = _Handler
    NAME = "mock-anthropic"

    def next_id(self, prefix: str = "msg") -> str:
        return f"{prefix}_01Mock{next(self._ids):018d}"


if __name__ == "__main__":  # manual use: python tests/clients/mock_anthropic.py
    m = MockAnthropic().start()
    mock_common.run_manually(m, f"mock Anthropic upstream on http://127.0.0.1:{m.port} (Ctrl-C to stop)")
