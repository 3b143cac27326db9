"""A mock OpenAI upstream that speaks the real wire format, for the client test suite.

Responses are built from the recorded transcripts in `fixtures/openai/` (same envelopes, key
order, SSE framing and usage chunks as api.openai.com), so the gateway under test sees what it
will see in production. Every request is recorded (method, path with query, headers, raw body)
for the tests to inspect.

Behaviour by requested model (after the gateway stripped its `provider:` prefix):

    default         text answer "Mock upstream reply to: <last user text>"; with `tools` and a
                    last message that is not a tool result: a tool call (fixture shape); with a
                    last message of role `tool`: a text answer quoting the tool result
    slow-stream     streams 6 content chunks 0.4 s apart
    fail-500        500 with OpenAI's server_error body
    fail-401        401 with OpenAI's invalid_api_key body, which quotes the key's last characters
    fail-429        429 with `retry-after: 7`, `x-ratelimit-remaining-requests: 0` and the
                    recorded insufficient_quota body
    parallel-tools  replays chat-stream-parallel-tool-calls.sse (non-stream: the same two calls)
    break-stream    streams 3 content chunks, then drops the connection mid-body (no [DONE])
    split-stream    the default text stream written in 5-byte pieces (events and UTF-8
                    characters split across reads, as TCP may deliver them)

`POST .../responses` (the Responses API, answered in the envelopes of the recorded
`responses-*` transcripts; `event: <type>` + `data:` framing, `sequence_number` on every event):

    default         a `message` item with the text answer above (the last user text of `input`,
                    a string or a list of items whose `content` is a string or `input_text`
                    parts); with function `tools` and a last item that is not a
                    `function_call_output`: a `function_call` item (fixture arguments); after
                    a `function_call_output`: a text answer quoting its `output`. Usage: the
                    recorded numbers, `RESPONSES_USAGE` (whole body) and
                    `RESPONSES_STREAM_USAGE` (the `response.completed` event)
    split-stream    the default stream written in 5-byte pieces
    break-stream    the default stream cut after `response.content_part.added` and 3 deltas
    quota-stream    streamed: 200, then the recorded `error` + `response.failed` events
                    (insufficient_quota); not streamed: the 429 of `fail-429`
    fail-500, fail-401, fail-429
                    as for chat, streamed or not (before any stream starts)

Routes: `POST .../chat/completions` under any prefix (`/v1`, `/groq/openai/v1`,
`/openai/deployments/{name}` for Azure), `POST .../responses`, `GET .../models`; anything else
is OpenAI's 404.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import socket
import threading
import time
from http.server import ThreadingHTTPServer
from urllib.parse import urlsplit

import mock_common
from mock_common import ABORT, REPO, MockHandler, compact, reply_text, sse_headers, stream_pieces
from mock_common import Recorded  # noqa: F401 - part of this module's API (tests and the other mocks)

FIXTURES = REPO / "fixtures" / "openai"

SLOW_CHUNKS = 6
SLOW_INTERVAL = 0.4
BREAK_AFTER = 3  # content chunks `break-stream` sends before dropping the connection


def load_sse(name: str) -> list:
    """The `data:` payloads of a recorded SSE body: dicts, and the string "[DONE]"."""
    return [payload for _, payload in mock_common.load_sse(FIXTURES, name)]


load_json = functools.partial(mock_common.load_json, FIXTURES)


# Recorded shapes, loaded once.
TEXT_COMPLETION = load_json("chat-completion-text.json")
TOOL_COMPLETION = load_json("chat-completion-tool-call.json")
TEXT_STREAM = load_sse("chat-stream-text.sse")
TOOL_STREAM = load_sse("chat-stream-tool-call.sse")
PARALLEL_STREAM = load_sse("chat-stream-parallel-tool-calls.sse")
ERROR_429_BODY = (FIXTURES / "error-429-insufficient-quota.json").read_bytes()
# The Responses API: a streamed text answer (named events), a streamed function call, a whole
# body, and a stream that fails in-band (recorded as one `data:` payload per line).
RESPONSES_STREAM = load_sse("responses-stream-text.sse")
RESPONSES_TOOL_STREAM = load_sse("responses-stream-function-call.sse")
RESPONSES_BODY = load_json("responses-reasoning-encrypted-content.json")
_QUOTA_CHUNKS = FIXTURES / "responses-stream-error-insufficient-quota.chunks.txt"
RESPONSES_QUOTA_STREAM = [json.loads(line) for line in _QUOTA_CHUNKS.read_text(encoding="utf-8").splitlines() if line.strip()]
RESPONSES_USAGE = RESPONSES_BODY["usage"]
RESPONSES_STREAM_USAGE = RESPONSES_STREAM[-1]["response"]["usage"]
# OpenAI's real 500 body.
ERROR_401_BODY = json.dumps(
    {
        "error": {
            "message": "Incorrect API key provided: sk-upstr*********test. You can find your API key at https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
).encode()
ERROR_500_BODY = (
    json.dumps(
        {
            "error": {
                "message": "The server had an error while processing your request. Sorry about that!",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        },
        indent=4,
    )
    + "\n"
).encode()


def _is_usage_chunk(c) -> bool:
    return isinstance(c, dict) and c.get("choices") == [] and "usage" in c


def tool_stream_arguments(chunks: list, index: int = 0) -> str:
    """The concatenated `arguments` of tool call `index` in a recorded stream."""
    out = []
    for c in chunks:
        if not isinstance(c, dict):
            continue
        for ch in c.get("choices", []):
            for tc in (ch.get("delta") or {}).get("tool_calls") or []:
                if tc.get("index") == index:
                    out.append(((tc.get("function") or {}).get("arguments")) or "")
    return "".join(out)


def parallel_tool_calls() -> list[dict]:
    """The tool calls (id, name, arguments) of the parallel fixture, reassembled."""
    calls: dict[int, dict] = {}
    for c in PARALLEL_STREAM:
        if not isinstance(c, dict):
            continue
        for ch in c.get("choices", []):
            for tc in (ch.get("delta") or {}).get("tool_calls") or []:
                slot = calls.setdefault(tc["index"], {"id": None, "name": None, "arguments": ""})
                if tc.get("id"):
                    slot["id"] = tc["id"]
                fn = tc.get("function") or {}
                if fn.get("name"):
                    slot["name"] = fn["name"]
                slot["arguments"] += fn.get("arguments") or ""
    return [calls[i] for i in sorted(calls)]


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def tool_result_reply(tool_content: str) -> str:
    return "The tool returned: " + tool_content[:200]


class _Handler(MockHandler):
    server_version = "mock-openai"

    def do_GET(self):
        rec = self._record()
        path = urlsplit(rec.path).path
        if path.endswith("/models"):
            body = {
                "object": "list",
                "data": [
                    {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"},
                    {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"},
                ],
            }
            return self._json(200, json.dumps(body, indent=2).encode())
        return self._not_found(rec)

    def do_POST(self):
        rec = self._record()
        path = urlsplit(rec.path).path
        if path.endswith("/responses"):
            return self._responses(rec)
        if not path.endswith("/chat/completions"):
            return self._not_found(rec)
        req = self._json_body(rec)
        if req is None:
            return
        model = req.get("model")
        if model is None and "/deployments/" in path:  # Azure: the deployment names the model
            model = path.split("/deployments/", 1)[1].split("/", 1)[0]
        model = str(model)
        stream = req.get("stream") is True
        include_usage = bool((req.get("stream_options") or {}).get("include_usage"))
        messages = req.get("messages") or []
        last = messages[-1] if messages else {}
        last_user = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
        tools = req.get("tools") or []

        if model in ("fail-500", "fail-401", "fail-429"):
            return self._fail(model)
        if model == "parallel-tools":
            if stream:
                return self._sse([c for c in PARALLEL_STREAM if include_usage or not _is_usage_chunk(c)])
            calls = [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in parallel_tool_calls()
            ]
            return self._json(200, self._tool_completion(model, calls))
        if model == "break-stream":
            words = [f"part{i} " for i in range(BREAK_AFTER + 3)]
            return self._sse(self._text_chunks(model, words, include_usage), abort_after=1 + BREAK_AFTER)
        if model == "split-stream":
            pieces = stream_pieces(reply_text(last_user))
            return self._sse(self._text_chunks(model, pieces, include_usage), piece_size=5)
        if model == "slow-stream":
            words = [f"slow{i} " for i in range(SLOW_CHUNKS)]
            return self._sse(self._text_chunks(model, words, include_usage), delay_between_content=SLOW_INTERVAL)

        if last.get("role") == "tool":
            text = tool_result_reply(_text_of(last.get("content")))
        elif tools:
            name = (tools[0].get("function") or {}).get("name") or "get_weather"
            if stream:
                return self._sse(self._tool_chunks(model, name, include_usage))
            call = copy.deepcopy(TOOL_COMPLETION["choices"][0]["message"]["tool_calls"][0])
            call["function"]["name"] = name
            return self._json(200, self._tool_completion(model, [call]))
        else:
            text = reply_text(last_user)

        if stream:
            return self._sse(self._text_chunks(model, stream_pieces(text), include_usage))
        body = copy.deepcopy(TEXT_COMPLETION)
        body["id"] = self.upstream.next_id()
        body["model"] = model
        body["choices"][0]["message"]["content"] = text
        return self._json(200, json.dumps(body, indent=2).encode())

    def _json_body(self, rec: Recorded) -> dict | None:
        """The request's JSON object; `None` after answering OpenAI's 400 when it is not one."""
        try:
            req = json.loads(rec.body)
            assert isinstance(req, dict)
            return req
        except Exception:
            self._error(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
                "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid "
                "JSON. If you have trouble figuring out how to fix this, please contact us through our help center "
                "at help.openai.com.)",
                "invalid_request_error",
            )
            return None

    def _fail(self, model: str):
        """The error answers of the `fail-*` models."""
        if model == "fail-500":
            return self._json(500, ERROR_500_BODY)
        if model == "fail-401":
            return self._json(401, ERROR_401_BODY)
        return self._json(
            429,
            ERROR_429_BODY,
            extra=[
                ("retry-after", "7"),
                ("x-ratelimit-limit-requests", "500"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", "7s"),
            ],
        )

    # -- the Responses API ---------------------------------------------------------------------

    def _responses(self, rec: Recorded):
        req = self._json_body(rec)
        if req is None:
            return
        model = str(req.get("model"))
        stream = req.get("stream") is True
        items = _input_items(req.get("input"))
        last = items[-1] if items else {}
        last_user = next((_input_text(i.get("content")) for i in reversed(items) if i.get("role") == "user"), "")
        tools = [t for t in req.get("tools") or [] if isinstance(t, dict) and t.get("type") == "function"]

        if model in ("fail-500", "fail-401", "fail-429") or (model == "quota-stream" and not stream):
            return self._fail("fail-429" if model == "quota-stream" else model)
        if model == "quota-stream":
            rid = self.upstream.next_item_id("resp")
            events = []
            for e in RESPONSES_QUOTA_STREAM:
                e = copy.deepcopy(e)
                if "response" in e:
                    e["response"].update(id=rid, model=model, created_at=int(time.time()))
                events.append(e)
            return self._named_sse(events)

        if last.get("type") == "function_call_output":
            text = tool_result_reply(str(last.get("output", "")))
        elif tools:
            name = tools[0].get("name") or "get_capital"
            rid = self.upstream.next_item_id("resp")
            events = self._responses_tool_events(req, rid, model, name)
            if stream:
                return self._named_sse(events)
            return self._json(200, self._responses_body(req, rid, model, events[-1]["response"]["output"]))
        else:
            text = reply_text(last_user)

        rid = self.upstream.next_item_id("resp")
        if not stream:
            item = {
                "id": self.upstream.next_item_id("msg"),
                "type": "message",
                "status": "completed",
                "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}],
                "role": "assistant",
            }
            return self._json(200, self._responses_body(req, rid, model, [item]))
        events = self._responses_text_events(req, rid, model, stream_pieces(text))
        if model == "split-stream":
            return self._named_sse(events, piece_size=5)
        if model == "break-stream":
            # created, in_progress, output_item.added, content_part.added, then 3 deltas
            return self._named_sse(events, abort_after=4 + BREAK_AFTER)
        return self._named_sse(events)

    def _responses_body(self, req: dict, rid: str, model: str, output: list) -> bytes:
        """A whole `response` object in the recorded body's envelope."""
        body = copy.deepcopy(RESPONSES_BODY)
        _echo_request(body, req)
        body.update(id=rid, created_at=int(time.time()), model=model, output=output)
        reasoning = req.get("reasoning") or {}
        body["reasoning"] = {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}
        return json.dumps(body, indent=2, ensure_ascii=False).encode()

    def _responses_text_events(self, req: dict, rid: str, model: str, pieces: list) -> list:
        """The recorded text stream's events around `pieces`: created, in_progress, item and part
        added, one delta per piece, text/part/item done, completed with the recorded usage."""
        tpl = {e["type"]: e for e in RESPONSES_STREAM}  # the first delta stands for all of them
        mid = self.upstream.next_item_id("msg")
        text = "".join(pieces)
        created_at = int(time.time())

        def env(name: str, **set_):
            e = copy.deepcopy(tpl[name])
            if "response" in e:
                _echo_request(e["response"], req)
                e["response"].update(id=rid, created_at=created_at, model=model)
            if "item_id" in e:
                e["item_id"] = mid
            if "item" in e:
                e["item"]["id"] = mid
            e.update(set_)
            return e

        part = {"type": "output_text", "text": text, "annotations": []}
        done_item = copy.deepcopy(tpl["response.output_item.done"]["item"])
        done_item.update(id=mid, content=[part])
        events = [env("response.created"), env("response.in_progress"), env("response.output_item.added"),
                  env("response.content_part.added")]
        events += [env("response.output_text.delta", delta=p) for p in pieces]
        events += [env("response.output_text.done", text=text), env("response.content_part.done", part=part),
                   env("response.output_item.done", item=done_item)]
        completed = env("response.completed")
        completed["response"]["output"] = [done_item]
        return _numbered(events + [completed])

    def _responses_tool_events(self, req: dict, rid: str, model: str, name: str) -> list:
        """The recorded function-call stream, calling `name`; its last event holds the whole answer."""
        fc, call = self.upstream.next_item_id("fc"), self.upstream.next_item_id("call")
        created_at = int(time.time())
        events = []
        for e in copy.deepcopy(RESPONSES_TOOL_STREAM):
            if "response" in e:
                _echo_request(e["response"], req)
                e["response"].update(id=rid, created_at=created_at, model=model)
            if "item_id" in e:
                e["item_id"] = fc
            for item in ([e["item"]] if "item" in e else []) + ((e.get("response") or {}).get("output") or []):
                item.update(id=fc, call_id=call, name=name)
            events.append(e)
        return _numbered(events)

    # -- response builders ---------------------------------------------------------------------

    def _tool_completion(self, model: str, calls: list) -> bytes:
        body = copy.deepcopy(TOOL_COMPLETION)
        body["id"] = self.upstream.next_id()
        body["model"] = model
        body["choices"][0]["message"]["tool_calls"] = calls
        return json.dumps(body, indent=2, sort_keys=True).encode()

    def _text_chunks(self, model: str, pieces: list, include_usage: bool) -> list:
        """Chunks in the recorded envelope: role chunk, one chunk per piece, finish, usage."""
        cid = self.upstream.next_id()
        first, content_tpl, finish = TEXT_STREAM[0], TEXT_STREAM[1], TEXT_STREAM[-3]
        usage = TEXT_STREAM[-2]
        assert _is_usage_chunk(usage) and finish["choices"][0]["finish_reason"] == "stop"

        def env(tpl):
            c = copy.deepcopy(tpl)
            c["id"], c["model"] = cid, model
            return c

        out = [env(first)]
        for p in pieces:
            c = env(content_tpl)
            c["choices"][0]["delta"] = {"content": p}
            out.append(c)
        out.append(env(finish))
        if include_usage:
            out.append(env(usage))
        out.append("[DONE]")
        return out

    def _tool_chunks(self, model: str, name: str, include_usage: bool) -> list:
        cid = self.upstream.next_id()
        out = []
        for c in TOOL_STREAM:
            if isinstance(c, dict):
                if _is_usage_chunk(c) and not include_usage:
                    continue
                c = copy.deepcopy(c)
                c["id"], c["model"] = cid, model
                for ch in c["choices"]:
                    for tc in (ch.get("delta") or {}).get("tool_calls") or []:
                        if (tc.get("function") or {}).get("name"):
                            tc["function"]["name"] = name
            out.append(c)
        return out

    # -- wire ----------------------------------------------------------------------------------

    def _common_headers(self):
        self.send_header("x-request-id", f"req_mock{time.monotonic_ns()}")
        self.send_header("openai-processing-ms", "12")
        self.send_header("openai-version", "2020-10-01")

    def _error(self, status: int, message: str, typ: str, code=None, param=None):
        body = {"error": {"message": message, "type": typ, "param": param, "code": code}}
        self._json(status, (json.dumps(body, indent=4) + "\n").encode())

    def _not_found(self, rec: Recorded):
        self._error(404, f"Invalid URL ({rec.method} {urlsplit(rec.path).path})", "invalid_request_error")

    def _sse(self, events: list, delay_between_content: float = 0.0, abort_after: int | None = None, piece_size: int = 0):
        """Send `data: ...\\n\\n` events, one HTTP chunk each, flushed as written. With
        `abort_after`, the connection is cut after that many events (a provider dying mid-stream);
        with `piece_size`, the body goes out in chunks of that many bytes instead."""
        self._send_chunked(sse_headers(), _sse_chunks(events, delay_between_content, abort_after, piece_size))

    def _named_sse(self, events: list, abort_after: int | None = None, piece_size: int = 0):
        """The Responses API's framing: `event: <type>\\ndata: {...}\\n\\n`, no `[DONE]`;
        `abort_after` and `piece_size` as for `_sse` (not both)."""
        raw = [f"event: {e['type']}\ndata: {compact(e)}\n\n".encode() for e in events]
        if abort_after is not None:
            raw = raw[:abort_after] + [ABORT]
        if piece_size:
            whole = b"".join(raw)
            raw = [whole[i : i + piece_size] for i in range(0, len(whole), piece_size)]
        self._send_chunked(sse_headers(), raw)


def _input_items(inp) -> list:
    """A Responses `input` as a list of items (a bare string is one user message)."""
    if isinstance(inp, str):
        return [{"role": "user", "content": inp}]
    return [i for i in inp if isinstance(i, dict)] if isinstance(inp, list) else []


def _input_text(content) -> str:
    """The text of an input item's `content`: a string, or `input_text` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "input_text")
    return ""


def _echo_request(resp: dict, req: dict):
    """The request parameters a `response` object echoes back (as the real API does)."""
    for key, default in (("instructions", None), ("max_output_tokens", None), ("previous_response_id", None),
                         ("parallel_tool_calls", True), ("tool_choice", "auto"), ("store", True),
                         ("temperature", 1.0), ("top_p", 1.0), ("user", None), ("metadata", {})):
        if key in resp:
            resp[key] = req.get(key, default)
    resp["tools"] = req.get("tools") or []


def _numbered(events: list) -> list:
    """`sequence_number` after `type` on every event, as the API has sent since mid-2025 (the
    recorded quota-error stream has it; the older text and function-call recordings predate it)."""
    out = []
    for n, e in enumerate(events):
        rest = {k: v for k, v in e.items() if k not in ("type", "sequence_number")}
        out.append({"type": e["type"], "sequence_number": n, **rest})
    return out


def _sse_chunks(events: list, delay_between_content: float, abort_after: int | None, piece_size: int):
    if piece_size:
        raw = b"".join(f"data: {e if isinstance(e, str) else compact(e)}\n\n".encode() for e in events)
        for i in range(0, len(raw), piece_size):
            yield raw[i : i + piece_size]
        return
    content_seen = 0
    for n, ev in enumerate(events):
        if abort_after is not None and n == abort_after:
            yield ABORT
            return
        is_content = isinstance(ev, dict) and any((ch.get("delta") or {}).get("content") for ch in ev.get("choices", []))
        if is_content and delay_between_content and content_seen:
            time.sleep(delay_between_content)
        content_seen += is_content
        data = ev if isinstance(ev, str) else compact(ev)
        yield f"data: {data}\n\n".encode()


class MockUpstream:
    """The server. `start()` binds 127.0.0.1 on a kernel-chosen port.

    The other mocks subclass it: they set `HANDLER` (their request handler class) and `NAME`
    (the server thread's name) and keep the lifecycle and the request log."""

    HANDLER: type[MockHandler] = _Handler
    NAME = "mock-openai"

    def __init__(self):
        self._lock = threading.Lock()
        self._requests: list[Recorded] = []
        self._ids = itertools.count(1)
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> "MockUpstream":
        server = ThreadingHTTPServer(("127.0.0.1", 0), self.HANDLER)
        server.daemon_threads = True
        server.upstream = self  # type: ignore[attr-defined]
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, name=self.NAME, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    @property
    def port(self) -> int:
        assert self.server
        return self.server.server_address[1]

    # -- recording -----------------------------------------------------------------------------

    def record(self, r: Recorded):
        with self._lock:
            self._requests.append(r)

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def matching(self, marker: str | bytes) -> list[Recorded]:
        m = marker.encode() if isinstance(marker, str) else marker
        return [r for r in self.requests if m in r.body]

    def find(self, marker: str | bytes, timeout: float = 2.0) -> Recorded:
        """The one request whose body contains `marker` (fails if none or several)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.matching(marker)
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        shown = marker if isinstance(marker, str) else marker[:60]
        assert found, f"the upstream never received a request containing {shown!r}; it got:\n" + self.describe_last(5)
        assert len(found) == 1, f"the upstream received {len(found)} requests containing {shown!r} (retried?):\n" + "\n".join(
            r.summary() for r in found
        )
        return found[0]

    def describe_last(self, n: int = 5) -> str:
        reqs = self.requests[-n:]
        return "\n".join("  " + r.summary() for r in reqs) or "  (no requests)"

    def next_id(self) -> str:
        return f"chatcmpl-mock{next(self._ids):08d}"

    def next_item_id(self, prefix: str) -> str:
        """A unique Responses API id: `resp_…`, `msg_…`, `fc_…`, `call_…`."""
        return f"{prefix}_mock{next(self._ids):08d}"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


if __name__ == "__main__":  # manual use: python tests/clients/mock_openai.py
    m = MockUpstream().start()
    mock_common.run_manually(m, f"mock OpenAI upstream on http://127.0.0.1:{m.port}/v1 (Ctrl-C to stop)")
