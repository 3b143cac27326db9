"""A mock Cohere v2 upstream (`POST /v2/chat`) that speaks the real wire format, for the client suite.

Answers are built from the recorded transcripts in `fixtures/cohere/` (same envelopes, key order,
`event:` + `data:` SSE framing, `message-end` with `finish_reason` and `usage`, the closing
`data: [DONE]`), so the gateway under test sees what api.cohere.com sends. Every request is
recorded (method, path with query, headers, raw body) for the tests to inspect.

Like the real API it wants `Authorization: Bearer <key>` (the key accepted here is
`test-cohere-key`; anything else is Cohere's 401 `{"id","message"}` body) and checks the
request fields the gateway's translator produces (roles, tool_choice values, `p` range, ...),
answering 400 in Cohere's shape when they are wrong.

Behaviour by requested model:

    default         text "Mock upstream reply to: <last user text>"; with `tools` and a last
                    message that is not a tool result: a tool call to the first tool with
                    arguments {"city": "Paris"} (tool_plan + tool_calls, finish TOOL_CALL); with a
                    last message of role `tool`: text "Tool said: <tool result text>"
    slow-stream     streams 6 text deltas 0.4 s apart
    fail-429        429 with Cohere's rate-limit body and `Retry-After: 7`
    fail-500        500 with Cohere's internal-error body
    break-stream    streams 3 text deltas, then drops the connection (no message-end, no [DONE])
"""

from __future__ import annotations

import copy
import functools
import json
import time
import uuid
from urllib.parse import urlsplit

import mock_common
from mock_common import ABORT, REPO, MockHandler, compact, reply_text, sse_headers, stream_pieces, text_of, tool_result_reply
from mock_openai import MockUpstream

FIXTURES = REPO / "fixtures" / "cohere"

API_KEY = "test-cohere-key"
SLOW_CHUNKS = 6
SLOW_INTERVAL = 0.4
BREAK_AFTER = 3  # text deltas `break-stream` sends before dropping the connection
TOOL_ARGUMENTS = {"city": "Paris"}
RETRY_AFTER = "7"

ROLES = {"system", "user", "assistant", "tool"}
TOP_LEVEL = {
    "model", "messages", "stream", "tools", "strict_tools", "documents", "citation_options", "response_format",
    "safety_mode", "max_tokens", "stop_sequences", "temperature", "seed", "frequency_penalty", "presence_penalty",
    "k", "p", "logprobs", "tool_choice", "thinking",
}  # fmt: skip


# (event name, payload) pairs of a recorded Cohere SSE body; payload is a dict or "[DONE]".
load_sse = functools.partial(mock_common.load_sse, FIXTURES)
load_json = functools.partial(mock_common.load_json, FIXTURES)


# Recorded shapes, loaded once.
TEXT_RESPONSE = load_json("chat-text.json")
TOOL_RESPONSE = load_json("chat-tool-call.json")
TEXT_STREAM = load_sse("chat-stream-text.sse")
TOOL_STREAM = load_sse("chat-stream-tool-call.sse")
ERROR_404 = load_json("error-404-model-not-found.json")


def _first(stream: list, kind: str) -> dict:
    return next(p for _, p in stream if isinstance(p, dict) and p.get("type") == kind)


def _all(stream: list, kind: str) -> list:
    return [p for _, p in stream if isinstance(p, dict) and p.get("type") == kind]


def tool_plan() -> str:
    """The recorded tool plan, as the mock sends it (whole and streamed)."""
    return "".join(p["delta"]["message"]["tool_plan"] for p in _all(TOOL_STREAM, "tool-plan-delta"))


def words(text: str) -> list:
    """Text split into stream deltas that join back to `text`."""
    return [p for p in stream_pieces(text) if p]


class BadRequest(Exception):
    pass


def validate(req) -> None:
    """The checks api.cohere.com makes that a translator can get wrong."""
    if not isinstance(req, dict):
        raise BadRequest("invalid request: body must be a JSON object")
    unknown = sorted(set(req) - TOP_LEVEL)
    if unknown:
        raise BadRequest(f"invalid request: unknown field: parameter {unknown[0]} is not a valid field")
    if not isinstance(req.get("model"), str):
        raise BadRequest("invalid request: model must be a string")
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("invalid request: messages must be a non-empty list")
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ROLES:
            raise BadRequest(f"invalid request: messages[{i}].role must be one of system, user, assistant, tool")
        if role == "tool" and not isinstance(m.get("tool_call_id"), str):
            raise BadRequest(f"invalid request: messages[{i}].tool_call_id is required for tool messages")
        if role == "assistant":
            for call in m.get("tool_calls") or []:
                if not isinstance((call.get("function") or {}).get("arguments"), str):
                    raise BadRequest(f"invalid request: messages[{i}] tool call arguments must be a string")
    if "stream" in req and not isinstance(req["stream"], bool):
        raise BadRequest("invalid request: stream must be a boolean")
    if req.get("tool_choice") not in (None, "REQUIRED", "NONE"):
        raise BadRequest("invalid request: tool_choice must be one of REQUIRED, NONE")
    if req.get("tool_choice") == "REQUIRED" and not req.get("tools"):
        raise BadRequest("invalid request: tool_choice REQUIRED needs tools")
    p = req.get("p")
    if p is not None and not (isinstance(p, (int, float)) and 0.01 <= p <= 0.99):
        raise BadRequest("invalid request: p must be between 0.01 and 0.99")
    for t in req.get("tools") or []:
        fn = t.get("function") if isinstance(t, dict) else None
        if t.get("type") != "function" or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise BadRequest("invalid request: tools must be function tools with a name")
        if not isinstance(fn.get("parameters"), dict):
            raise BadRequest(f"invalid request: tool {fn['name']} requires parameters")


class _Handler(MockHandler):
    server_version = "envoy"
    COMMON_HEADERS = [
        ("x-trial-endpoint-call-limit", "20"),
        ("x-trial-endpoint-call-remaining", "19"),
        ("num_chars", "42"),
        ("x-envoy-upstream-service-time", "12"),
    ]

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {API_KEY}":
            return True
        self._error(401, "invalid api token")
        return False

    def do_GET(self):
        self._record()
        if self._authorized():
            self._error(404, f"Not Found: {urlsplit(self.path).path}")

    def do_POST(self):
        rec = self._record()
        if not self._authorized():
            return
        if not urlsplit(rec.path).path.endswith("/v2/chat"):
            return self._error(404, f"Not Found: {urlsplit(rec.path).path}")
        try:
            req = json.loads(rec.body)
            validate(req)
        except json.JSONDecodeError as e:
            return self._error(400, f"invalid request: body is not valid JSON: {e}")
        except BadRequest as e:
            return self._error(400, str(e))

        model = req["model"]
        stream = req.get("stream") is True
        messages = req["messages"]
        last = messages[-1]
        last_user = next((text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        tools = req.get("tools") or []

        if model == "fail-429":
            return self._error(
                429,
                "You are using a Trial key, which is limited to 20 API calls / minute. You can continue to use the "
                "Trial key for free or upgrade to a Production key with higher rate limits at "
                "'https://dashboard.cohere.com/api-keys'. Contact us on 'https://discord.gg/XW44jPfYJu' or email "
                "us at support@cohere.com with any questions",
                extra=[("Retry-After", RETRY_AFTER)],
            )
        if model == "fail-500":
            return self._error(500, "internal server error, this has been reported to our developers")
        if model.startswith("nonexistent"):
            body = copy.deepcopy(ERROR_404)
            body["message"] = body["message"].replace("'nonexistent'", repr(model))
            return self._json(404, body)
        if model == "break-stream":
            return self._sse(self._text_events([f"part{i} " for i in range(BREAK_AFTER + 3)]), abort_after_text=BREAK_AFTER)
        if model == "slow-stream":
            return self._sse(self._text_events([f"slow{i} " for i in range(SLOW_CHUNKS)]), text_interval=SLOW_INTERVAL)

        if last.get("role") == "tool":
            text = tool_result_reply(text_of(last.get("content")))
        elif tools and req.get("tool_choice") != "NONE":
            name = tools[0]["function"]["name"]
            call_id = f"{name}_{uuid.uuid4().hex[:12]}"
            if stream:
                return self._sse(self._tool_events(name, call_id))
            return self._json(200, self._tool_response(name, call_id))
        else:
            text = reply_text(last_user)

        if stream:
            return self._sse(self._text_events(words(text)))
        body = copy.deepcopy(TEXT_RESPONSE)
        body["id"] = self.upstream.next_id()
        body["message"]["content"][0]["text"] = text
        return self._json(200, body)

    # -- response builders (recorded envelopes) --------------------------------------------------

    def _tool_response(self, name: str, call_id: str) -> dict:
        body = copy.deepcopy(TOOL_RESPONSE)
        body["id"] = self.upstream.next_id()
        body["message"]["tool_plan"] = tool_plan()
        call = body["message"]["tool_calls"][0]
        call["id"] = call_id
        call["function"]["name"] = name
        call["function"]["arguments"] = compact(TOOL_ARGUMENTS)
        return body

    def _start(self, stream: list) -> tuple:
        start = copy.deepcopy(_first(stream, "message-start"))
        start["id"] = self.upstream.next_id()
        return ("message-start", start)

    def _text_events(self, pieces: list) -> list:
        """message-start, content-start, one content-delta per piece, content-end, message-end, [DONE]."""
        delta_tpl = _first(TEXT_STREAM, "content-delta")
        out = [self._start(TEXT_STREAM), ("content-start", copy.deepcopy(_first(TEXT_STREAM, "content-start")))]
        for p in pieces:
            d = copy.deepcopy(delta_tpl)
            d["delta"]["message"]["content"]["text"] = p
            out.append(("content-delta", d))
        out.append(("content-end", copy.deepcopy(_first(TEXT_STREAM, "content-end"))))
        out.append(("message-end", copy.deepcopy(_first(TEXT_STREAM, "message-end"))))
        out.append((None, "[DONE]"))
        return out

    def _tool_events(self, name: str, call_id: str) -> list:
        """The recorded tool-call stream: tool-plan deltas, then one call with our name and arguments."""
        out = [self._start(TOOL_STREAM)]
        out += [("tool-plan-delta", copy.deepcopy(p)) for p in _all(TOOL_STREAM, "tool-plan-delta")]
        start = copy.deepcopy(_first(TOOL_STREAM, "tool-call-start"))
        start["delta"]["message"]["tool_calls"]["id"] = call_id
        start["delta"]["message"]["tool_calls"]["function"]["name"] = name
        out.append(("tool-call-start", start))
        args = compact(TOOL_ARGUMENTS)
        delta_tpl = _first(TOOL_STREAM, "tool-call-delta")
        for i in range(0, len(args), 4):
            d = copy.deepcopy(delta_tpl)
            d["delta"]["message"]["tool_calls"]["function"]["arguments"] = args[i : i + 4]
            out.append(("tool-call-delta", d))
        out.append(("tool-call-end", copy.deepcopy(_first(TOOL_STREAM, "tool-call-end"))))
        out.append(("message-end", copy.deepcopy(_first(TOOL_STREAM, "message-end"))))
        out.append((None, "[DONE]"))
        return out

    # -- wire --------------------------------------------------------------------------------------

    def _json(self, status: int, body, extra=()):
        super()._json(status, body if isinstance(body, bytes) else compact(body).encode(), extra)

    def _error(self, status: int, message: str, extra=()):
        """Cohere's error envelope: `{"id": <uuid>, "message": ...}`."""
        self._json(status, {"id": str(uuid.uuid4()), "message": message}, extra=extra)

    def _sse(self, events: list, text_interval: float = 0.0, abort_after_text: int | None = None):
        """`event: <name>` + `data: <json>` events, one HTTP chunk each, flushed as written. With
        `abort_after_text`, the connection is cut after that many text deltas."""
        self._send_chunked(sse_headers("text/event-stream"), _sse_chunks(events, text_interval, abort_after_text))


def _sse_chunks(events: list, text_interval: float, abort_after_text: int | None):
    texts = 0
    for name, payload in events:
        is_text = name == "content-delta"
        if is_text and abort_after_text is not None and texts == abort_after_text:
            yield ABORT
            return
        if is_text and text_interval and texts:
            time.sleep(text_interval)
        texts += is_text
        data = payload if isinstance(payload, str) else compact(payload)
        yield ((f"event: {name}\n" if name else "") + f"data: {data}\n\n").encode()


class MockCohere(MockUpstream):
    """The server: `mock_openai.MockUpstream` with the Cohere handler and ids."""

    HANDLER = _Handler
    NAME = "mock-cohere"

    def next_id(self) -> str:
        """A response id in Cohere's UUID shape, unique per mock."""
        return str(uuid.UUID(int=(0x5EED << 96) | next(self._ids)))


if __name__ == "__main__":  # manual use: python tests/clients/mock_cohere.py
    m = MockCohere().start()
    mock_common.run_manually(m, f"mock Cohere upstream on http://127.0.0.1:{m.port} (POST /v2/chat, key {API_KEY}; Ctrl-C to stop)")
