"""A mock Google Gemini upstream (generativelanguage.googleapis.com) that speaks the real wire format.

Answers are built from the recorded transcripts in `fixtures/gemini/`: the same
`GenerateContentResponse` envelope (candidates, usageMetadata, modelVersion, responseId), the
same `thoughtSignature` on function calls (Gemini 3), the same `alt=sse` framing (`data: ` lines,
CRLF CRLF between events, no event names, no `[DONE]`; the stream simply ends) and the same
`{"error":{"code","message","status","details"}}` error bodies. Every request is recorded (method,
path with query, headers, raw body) for the tests to inspect.

Routes (under `/v1beta` or `/v1`):

    POST /models/{model}:generateContent              one JSON answer (2-space indented, as Google)
    POST /models/{model}:streamGenerateContent?alt=sse  SSE; without alt=sse a JSON array of chunks
    GET  /models                                       a short model list

Auth: `x-goog-api-key: test-gemini-key` (or `?key=test-gemini-key`). A missing key is Google's 403
PERMISSION_DENIED ("unregistered callers"); a wrong one is Google's 400 INVALID_ARGUMENT with
ErrorInfo reason API_KEY_INVALID. Bodies are checked like the real API: unknown top-level or
generationConfig fields are 400 `Unknown name "...": Cannot find field.`, `contents` is required,
roles must be `user`/`model`, a `functionResponse` needs a name, and (as Gemini 3 validates) the
first `functionCall` of each model turn in the current turn must carry the `thoughtSignature` this
mock issued, or the answer is Gemini's 400 "Function call is missing a thought_signature".

Behaviour by requested model:

    default         text "Mock upstream reply to: <last user text>"; with `tools` and a last turn
                    that is not a function response: a functionCall to the first declared function
                    with args {"city": "Paris"} (or a value per required property of its schema);
                    when the last turn holds function responses: "Tool said: <result>" (the
                    response's `result` when it is a string, else its compact JSON)
                    With thinkingConfig.includeThoughts a `thought: true` summary part comes first.
    slow-stream     6 text chunks 0.4 s apart
    fail-429        429 RESOURCE_EXHAUSTED with google.rpc.RetryInfo retryDelay "34.4s" (the
                    recorded body). Gemini sends its retry hint in the body, not in Retry-After.
    fail-500        500 INTERNAL
    break-stream    3 text chunks, then the connection is dropped (no finishReason ever sent)
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import time
from urllib.parse import parse_qs, unquote, urlsplit

import mock_common
from mock_common import ABORT, REPO, MockHandler, Recorded, reply_text, stream_pieces, tool_result_reply
from mock_openai import MockUpstream

FIXTURES = REPO / "fixtures" / "gemini"

API_KEY = "test-gemini-key"
SLOW_CHUNKS = 6
SLOW_INTERVAL = 0.4
BREAK_AFTER = 3


load_json = functools.partial(mock_common.load_json, FIXTURES)


def load_sse(name: str) -> list:
    """The `data:` payloads of a recorded Gemini SSE body."""
    return [payload for _, payload in mock_common.load_sse(FIXTURES, name)]


# Recorded shapes, loaded once.
TEXT_RESPONSE = load_json("generate-content-text.json")
TOOL_RESPONSE = load_json("generate-content-tool-call.json")
TEXT_CHUNKS = [json.loads(line) for line in (FIXTURES / "stream-text.chunks.txt").read_text().splitlines() if line.strip()]
TOOL_STREAM = load_sse("stream-tool-call-thought-signature.sse")
ERROR_429_BODY = (FIXTURES / "error-429-resource-exhausted.json").read_bytes()
ERROR_500 = {
    "error": {
        "code": 500,
        "message": "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
        "status": "INTERNAL",
    }
}
# The signature this mock puts on its function calls (the recorded one) and expects back.
SIGNATURE = TOOL_RESPONSE["candidates"][0]["content"]["parts"][0]["thoughtSignature"]
THOUGHT_SUMMARY = "**Considering the request**\n\nMock thought summary.\n\n"

_KNOWN_TOP = {
    "contents", "systemInstruction", "tools", "toolConfig", "safetySettings", "generationConfig", "cachedContent",
}
_KNOWN_GENERATION = {
    "stopSequences", "responseMimeType", "responseSchema", "responseJsonSchema", "responseModalities",
    "candidateCount", "maxOutputTokens", "temperature", "topP", "topK", "seed", "presencePenalty",
    "frequencyPenalty", "responseLogprobs", "logprobs", "enableEnhancedCivicAnswers", "speechConfig",
    "thinkingConfig", "imageConfig", "mediaResolution",
}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _sse_json(obj) -> str:
    """Gemini's SSE payload style: `": "` after keys, bare `,` between members."""
    return json.dumps(obj, separators=(",", ": "), ensure_ascii=False)


class _Rejected(Exception):
    def __init__(self, status: int, body: dict):
        super().__init__(body["error"]["message"])
        self.status = status
        self.body = body


def google_error(code: int, status: str, message: str, details=None) -> dict:
    err = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = details
    return {"error": err}


def _invalid(message: str) -> _Rejected:
    return _Rejected(400, google_error(400, "INVALID_ARGUMENT", message))


# -- request inspection ---------------------------------------------------------------------------


def validate(req) -> None:
    """The checks the real API makes that a translator can get wrong."""
    if not isinstance(req, dict):
        raise _invalid("Invalid JSON payload received. Expected an object.")
    for key in req:
        if _camel(key) not in _KNOWN_TOP:
            raise _invalid(f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.')
    for key in req.get("generationConfig") or req.get("generation_config") or {}:
        if _camel(key) not in _KNOWN_GENERATION:
            raise _invalid(
                f'Invalid JSON payload received. Unknown name "{key}" at \'generation_config\': Cannot find field.'
            )
    contents = req.get("contents")
    if not contents:
        raise _invalid("* GenerateContentRequest.contents: contents is not specified\n")
    for i, c in enumerate(contents):
        if c.get("role", "user") not in ("user", "model"):
            raise _invalid("Please use a valid role: user, model.")
        if not c.get("parts"):
            raise _invalid(f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty.\n")
        for j, p in enumerate(c["parts"]):
            fr = p.get("functionResponse")
            if fr is not None and not fr.get("name"):
                raise _invalid(
                    f"* GenerateContentRequest.contents[{i}].parts[{j}].function_response.name: Name cannot be empty.\n"
                )
    # Gemini 3: the first functionCall of every model step in the current turn needs its signature.
    last_user_text = max((i for i, c in enumerate(contents) if c.get("role", "user") == "user" and any("text" in p for p in c["parts"])), default=-1)
    for i, c in enumerate(contents[last_user_text + 1 :], start=last_user_text + 1):
        calls = [p for p in c["parts"] if "functionCall" in p] if c.get("role") == "model" else []
        if calls and calls[0].get("thoughtSignature") != SIGNATURE:
            name = calls[0]["functionCall"].get("name", "")
            raise _invalid(
                "Function call is missing a thought_signature in functionCall parts. This is required for tools to "
                "work correctly, and missing thought_signature may lead to degraded model performance. Additional "
                f"data, function call `default_api:{name}` , position {i + 1}. Please refer to "
                "https://ai.google.dev/gemini-api/docs/thought-signatures for more details."
            )


def _last_user_text(contents: list) -> str:
    for c in reversed(contents):
        if c.get("role", "user") == "user":
            texts = [p["text"] for p in c.get("parts", []) if "text" in p]
            if texts:
                return " ".join(texts)
    return ""


def _function_result(contents: list) -> str | None:
    """The result text when the last turn holds function responses, else None."""
    if not contents:
        return None
    responses = [p["functionResponse"] for p in contents[-1].get("parts", []) if "functionResponse" in p]
    if not responses:
        return None
    resp = responses[-1].get("response") or {}
    if set(resp) == {"result"} and isinstance(resp["result"], str):
        return resp["result"]
    return json.dumps(resp, separators=(",", ":"), ensure_ascii=False)


def _first_function(req) -> dict | None:
    for tool in req.get("tools") or []:
        for decl in tool.get("functionDeclarations") or tool.get("function_declarations") or []:
            return decl
    return None


def _args_for(decl: dict) -> dict:
    schema = decl.get("parametersJsonSchema") or decl.get("parameters") or {}
    props = schema.get("properties") or {}
    if not props or "city" in props:
        return {"city": "Paris"}
    args = {}
    for name in schema.get("required") or list(props)[:1]:
        typ = str((props.get(name) or {}).get("type", "string")).lower()
        args[name] = {"integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}.get(typ, "Paris")
    return args


def _thinking(req) -> bool:
    gen = req.get("generationConfig") or req.get("generation_config") or {}
    tc = gen.get("thinkingConfig") or gen.get("thinking_config") or {}
    return bool(tc.get("includeThoughts") or tc.get("include_thoughts"))


class _Handler(MockHandler):
    server_version = "scaffolding on HTTPServer2"
    JSON_TYPE = "application/json; charset=UTF-8"
    COMMON_HEADERS = [
        ("Vary", "Origin"),
        ("Vary", "X-Origin"),
        ("Vary", "Referer"),
        ("X-XSS-Protection", "0"),
        ("X-Frame-Options", "SAMEORIGIN"),
        ("X-Content-Type-Options", "nosniff"),
        ("Server-Timing", "gfet4t7; dur=321"),
    ]

    def _authorized(self, rec: Recorded) -> bool:
        query = parse_qs(urlsplit(rec.path).query)
        key = rec.header("x-goog-api-key") or (query.get("key") or [None])[0]
        if key is None:
            self._json(
                403,
                google_error(
                    403,
                    "PERMISSION_DENIED",
                    "Method doesn't allow unregistered callers (callers without established identity). Please use API "
                    "Key or other form of API consumer identity to call this API.",
                ),
            )
            return False
        if key != API_KEY:
            details = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                },
                {
                    "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                    "locale": "en-US",
                    "message": "API key not valid. Please pass a valid API key.",
                },
            ]
            self._json(400, google_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", details))
            return False
        return True

    def do_GET(self):
        rec = self._record()
        if not self._authorized(rec):
            return
        path = urlsplit(rec.path).path
        if path.rstrip("/").endswith("/models"):
            models = [
                {"name": f"models/{m}", "version": "001", "displayName": m, "inputTokenLimit": 1048576,
                 "outputTokenLimit": 65536, "supportedGenerationMethods": ["generateContent", "countTokens"]}
                for m in ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-3-pro-preview")
            ]
            return self._json(200, {"models": models})
        return self._not_found(path)

    def do_POST(self):
        rec = self._record()
        split = urlsplit(rec.path)
        path = split.path
        head, _, method = path.rpartition(":")
        if not self._authorized(rec):
            return
        if "/models/" not in head or method not in ("generateContent", "streamGenerateContent"):
            return self._not_found(path)
        model = unquote(head.split("/models/", 1)[1])
        sse = method == "streamGenerateContent" and parse_qs(split.query).get("alt") == ["sse"]
        try:
            req = json.loads(rec.body)
            validate(req)
        except json.JSONDecodeError as e:
            return self._json(400, google_error(400, "INVALID_ARGUMENT", f"Invalid JSON payload received. {e.msg}."))
        except _Rejected as r:
            return self._json(r.status, r.body)

        if model == "fail-429":
            return self._raw(429, ERROR_429_BODY)
        if model == "fail-500":
            return self._json(500, ERROR_500)

        contents = req["contents"]
        thinking = _thinking(req)
        result = _function_result(contents)
        decl = _first_function(req)
        rid = self.upstream.next_response_id()
        if result is None and decl is not None and model not in ("slow-stream", "break-stream"):
            call = {"name": decl.get("name", "tool"), "args": _args_for(decl)}
            if method == "generateContent":
                return self._json(200, self._tool_response(model, rid, call))
            return self._stream(self._tool_chunks(model, rid, call), sse)

        if model == "slow-stream":
            pieces = [f"slow{i} " for i in range(SLOW_CHUNKS)]
        elif model == "break-stream":
            pieces = [f"part{i} " for i in range(BREAK_AFTER + 3)]
        else:
            text = tool_result_reply(result) if result is not None else reply_text(_last_user_text(contents))
            pieces = stream_pieces(text)
        if method == "generateContent":
            return self._json(200, self._text_response(model, rid, "".join(pieces), thinking))
        chunks = self._text_chunks(model, rid, pieces, thinking)
        if model == "break-stream":
            return self._stream(chunks, sse, abort_after=BREAK_AFTER)
        return self._stream(chunks, sse, delay=SLOW_INTERVAL if model == "slow-stream" else 0.0)

    # -- answers built from the recordings ------------------------------------------------------

    def _text_response(self, model: str, rid: str, text: str, thinking: bool) -> dict:
        body = copy.deepcopy(TEXT_RESPONSE)
        parts = body["candidates"][0]["content"]["parts"]
        parts[0]["text"] = text
        if thinking:
            parts.insert(0, {"text": THOUGHT_SUMMARY, "thought": True})
        body["modelVersion"], body["responseId"] = model, rid
        return body

    def _tool_response(self, model: str, rid: str, call: dict) -> dict:
        body = copy.deepcopy(TOOL_RESPONSE)
        body["candidates"][0]["content"]["parts"][0]["functionCall"] = call
        body["modelVersion"], body["responseId"] = model, rid
        return body

    def _text_chunks(self, model: str, rid: str, pieces: list, thinking: bool) -> list:
        """Chunks in the recorded gemini-3 shape: text chunks, then an empty text part carrying a
        thoughtSignature together with finishReason STOP; usageMetadata on every chunk."""
        first, last = TEXT_CHUNKS[0], TEXT_CHUNKS[-1]
        out = []

        def chunk(tpl, parts):
            c = copy.deepcopy(tpl)
            c["candidates"][0]["content"]["parts"] = parts
            c["modelVersion"], c["responseId"] = model, rid
            return c

        if thinking:
            out.append(chunk(first, [{"text": THOUGHT_SUMMARY, "thought": True}]))
        out.extend(chunk(first, [{"text": p}]) for p in pieces)
        out.append(chunk(last, copy.deepcopy(last["candidates"][0]["content"]["parts"])))
        return out

    def _tool_chunks(self, model: str, rid: str, call: dict) -> list:
        out = copy.deepcopy(TOOL_STREAM)
        out[0]["candidates"][0]["content"]["parts"][0]["functionCall"] = call
        out[0]["candidates"][0]["content"]["parts"][0]["thoughtSignature"] = SIGNATURE
        for c in out:
            c["modelVersion"], c["responseId"] = model, rid
        return out

    # -- wire -------------------------------------------------------------------------------------

    def _raw(self, status: int, body: bytes):
        super()._json(status, body)

    def _json(self, status: int, obj):  # an object, formatted as Google does (unlike the base's bytes)
        self._raw(status, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())

    def _not_found(self, path: str):
        self._json(404, google_error(404, "NOT_FOUND", f"Requested entity was not found: {path}"))

    def _stream(self, chunks: list, sse: bool, delay: float = 0.0, abort_after: int | None = None):
        """`alt=sse`: one `data: <json>\\r\\n\\r\\n` event per chunk, one HTTP chunk each, and the
        body just ends. Without alt=sse: the JSON array Google streams instead."""
        if not sse:
            return self._raw(200, ("[" + ",\n".join(json.dumps(c, indent=2) for c in chunks) + "]").encode())
        headers = [("Content-Type", "text/event-stream"), ("Content-Disposition", "attachment"), ("Transfer-Encoding", "chunked")]
        self._send_chunked(headers, _sse_chunks(chunks, delay, abort_after))


def _sse_chunks(chunks: list, delay: float, abort_after: int | None):
    for n, c in enumerate(chunks):
        if abort_after is not None and n == abort_after:
            yield ABORT
            return
        if delay and n:
            time.sleep(delay)
        yield f"data: {_sse_json(c)}\r\n\r\n".encode()


class MockGemini(MockUpstream):
    """The server: `mock_openai.MockUpstream` with the Gemini handler and ids; base URL
    `http://127.0.0.1:<port>`."""

    HANDLER = _Handler
    NAME = "mock-gemini"

    def next_response_id(self) -> str:
        # Same alphabet and length as Google's responseId values.
        raw = f"mock{next(self._ids):012d}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")[:23]


if __name__ == "__main__":  # manual use: python tests/clients/mock_gemini.py
    m = MockGemini().start()
    mock_common.run_manually(m, f"mock Gemini upstream on http://127.0.0.1:{m.port} (key {API_KEY}; Ctrl-C to stop)")
