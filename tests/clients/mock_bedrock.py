"""A mock AWS Bedrock Runtime upstream (Converse / ConverseStream) for the client test suite.

Answers are built from the recorded transcripts in `fixtures/bedrock/`: the same JSON envelopes
(`output.message.content`, `stopReason`, `usage` with the cache fields, `metrics`), and for
streams real `application/vnd.amazon.eventstream` binary frames with both CRC32s, the
`:event-type` / `:content-type` / `:message-type` string headers in the recorded order, and the
random `p` padding field in every payload. Every request is recorded (see `Recorded`).

Authentication is checked as AWS does, answering 403 in Bedrock's shape (`{"message": ...}` plus
the `x-amzn-ErrorType` header) when it is wrong:
- SigV4: `Authorization: AWS4-HMAC-SHA256 Credential=AKIDTESTBEDROCK/<date>/<region>/bedrock/
  aws4_request, SignedHeaders=..., Signature=...` with `x-amz-date`; the signature is fully
  verified with secret `test-bedrock-secret` (canonical URI = the received path URI-encoded
  again, as for every non-S3 service), the date must be within 5 minutes, `host` and
  `x-amz-date` must be signed, and `x-amz-security-token` must be signed when sent.
- Bedrock API keys: `Authorization: Bearer test-bedrock-key`.

Behaviour by model id (the `{modelId}` of `/model/{modelId}/converse[-stream]`, URL-decoded):

    default          text "Mock upstream reply to: <last user text>"; with `toolConfig.tools`
                     and a last turn without toolResult: a toolUse of the first tool with input
                     {"city": "Paris"}; with a toolResult last: text "Tool said: <result text>".
                     With `additionalModelRequestFields.thinking`, a signed reasoning block
                     (recorded text and signature) comes first.
    slow-stream      6 text deltas 0.4 s apart
    break-stream     3 text deltas, then the connection is dropped (no messageStop)
    fail-429         429 ThrottlingException (plus `retry-after: 7`, which Bedrock itself
                     rarely sends; it is there so retry-hint handling can be tested)
    fail-500         500 InternalServerException
    fail-stream-throttle  2 text deltas, then an in-stream `throttlingException` exception frame
    bad-model        the recorded 400 "The provided model identifier is invalid."

Like the real service the mock refuses (400 ValidationException) unknown top-level keys, an
empty or non-alternating `messages`, and toolUse/toolResult blocks without a `toolConfig`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import hmac
import json
import random
import struct
import time
import zlib
from datetime import datetime, timezone
from urllib.parse import quote, unquote, urlsplit

import mock_common
from mock_common import ABORT, REPO, MockHandler, Recorded, reply_text, stream_pieces, tool_result_reply
from mock_openai import MockUpstream

FIXTURES = REPO / "fixtures" / "bedrock"

ACCESS_KEY_ID = "AKIDTESTBEDROCK"
SECRET_ACCESS_KEY = "test-bedrock-secret"
API_KEY = "test-bedrock-key"
SERVICE = "bedrock"
MAX_SKEW_SECONDS = 300

SLOW_CHUNKS = 6
SLOW_INTERVAL = 0.4
BREAK_AFTER = 3
PADDING = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

TOP_LEVEL_KEYS = {
    "messages", "system", "inferenceConfig", "toolConfig", "guardrailConfig", "additionalModelRequestFields",
    "promptVariables", "additionalModelResponseFieldPaths", "requestMetadata", "performanceConfig",
    "outputConfig", "serviceTier",
}


_load_json = functools.partial(mock_common.load_json, FIXTURES)


def _load_jsonl(name: str) -> list:
    return [json.loads(line) for line in (FIXTURES / name).read_text(encoding="utf-8").splitlines() if line]


TEXT_RESPONSE = _load_json("converse-text.json")
REASONING_RESPONSE = _load_json("converse-reasoning.json")
TOOL_RESPONSE = _load_json("converse-tool-use-with-reasoning.json")
ERROR_400_BODY = (FIXTURES / "error-400-invalid-model.json").read_bytes()
TEXT_EVENTS = _load_jsonl("converse-stream-text.decoded.jsonl")
TOOL_EVENTS = _load_jsonl("converse-stream-tool-use.decoded.jsonl")
REASONING_EVENTS = _load_jsonl("converse-stream-reasoning.decoded.jsonl")
RECORDED_REASONING = REASONING_RESPONSE["output"]["message"]["content"][0]["reasoningContent"]["reasoningText"]
RECORDED_STREAM_SIGNATURE = next(
    e["payload"]["delta"]["reasoningContent"]["signature"]
    for e in REASONING_EVENTS
    if "signature" in (e["payload"].get("delta") or {}).get("reasoningContent", {})
)
RECORDED_TOOL_USE_ID = next(e for e in TOOL_EVENTS if e[":event-type"] == "contentBlockStart")["payload"]["start"][
    "toolUse"
]["toolUseId"]


# -- event-stream framing -------------------------------------------------------------------------


def encode_frame(headers: list, payload: bytes) -> bytes:
    """One event-stream message: string headers (type 7), payload, both CRC32s (big-endian)."""
    hdr = b""
    for name, value in headers:
        n, v = name.encode(), value.encode()
        hdr += struct.pack(">B", len(n)) + n + b"\x07" + struct.pack(">H", len(v)) + v
    total = 16 + len(hdr) + len(payload)
    prelude = struct.pack(">II", total, len(hdr))
    head = prelude + struct.pack(">I", zlib.crc32(prelude)) + hdr + payload
    return head + struct.pack(">I", zlib.crc32(head))


def decode_frames(data: bytes) -> list:
    """Messages of an event-stream body as (headers dict, payload bytes); CRCs checked (raises)."""
    out, at = [], 0
    while at < len(data):
        total, hlen, pcrc = struct.unpack(">III", data[at : at + 12])
        assert zlib.crc32(data[at : at + 8]) == pcrc, "prelude CRC"
        msg = data[at : at + total]
        assert len(msg) == total, "truncated message"
        assert zlib.crc32(msg[:-4]) == struct.unpack(">I", msg[-4:])[0], "message CRC"
        headers, h = {}, msg[12 : 12 + hlen]
        i = 0
        while i < len(h):
            n = h[i]
            name = h[i + 1 : i + 1 + n].decode()
            i += 1 + n
            typ = h[i]
            i += 1
            assert typ == 7, f"header type {typ}"
            (vlen,) = struct.unpack(">H", h[i : i + 2])
            headers[name] = h[i + 2 : i + 2 + vlen].decode()
            i += 2 + vlen
        out.append((headers, msg[12 + hlen : -4]))
        at += total
    return out


def _payload(obj: dict) -> bytes:
    """Compact JSON with sorted keys and a random-length `p` padding, as Bedrock sends."""
    obj = dict(obj)
    obj["p"] = PADDING[: random.randint(1, len(PADDING))]
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def event_frame(event_type: str, body: dict) -> bytes:
    headers = [(":event-type", event_type), (":content-type", "application/json"), (":message-type", "event")]
    return encode_frame(headers, _payload(body))


def exception_frame(exception_type: str, message: str) -> bytes:
    headers = [(":exception-type", exception_type), (":content-type", "application/json"), (":message-type", "exception")]
    return encode_frame(headers, json.dumps({"message": message}, separators=(",", ":")).encode())


# -- SigV4 -----------------------------------------------------------------------------------------


def _canonical_query(query: str) -> str:
    pairs = []
    for part in filter(None, query.split("&")):
        k, _, v = part.partition("=")
        pairs.append((quote(unquote(k), safe="-_.~"), quote(unquote(v), safe="-_.~")))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def signature(secret: str, method: str, path_and_query: str, headers: dict, signed: list, body: bytes,
              amz_date: str, region: str, service: str = SERVICE) -> str:
    """The SigV4 signature (hex) of a request; `headers` maps lower-case names to values."""
    path, _, query = path_and_query.partition("?")
    canonical_headers = "".join(f"{h}:{' '.join(headers.get(h, '').split())}\n" for h in signed)
    canonical = "\n".join([
        method.upper(),
        quote(path or "/", safe="/~"),
        _canonical_query(query),
        canonical_headers,
        ";".join(signed),
        hashlib.sha256(body).hexdigest(),
    ])
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + secret).encode()
    for part in (amz_date[:8], region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def sign(method: str, url: str, body: bytes, region: str = "us-east-1", now: float | None = None,
         access_key: str = ACCESS_KEY_ID, secret: str = SECRET_ACCESS_KEY, extra: dict | None = None) -> dict:
    """Headers (`x-amz-date`, `authorization`, plus `extra`) that sign a request, for tests."""
    parts = urlsplit(url)
    amz_date = datetime.fromtimestamp(time.time() if now is None else now, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    headers = {"host": parts.netloc, "x-amz-date": amz_date, **{k.lower(): v for k, v in (extra or {}).items()}}
    signed = sorted(headers)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    sig = signature(secret, method, path, headers, signed, body, amz_date, region)
    auth = (f"AWS4-HMAC-SHA256 Credential={access_key}/{amz_date[:8]}/{region}/{SERVICE}/aws4_request, "
            f"SignedHeaders={';'.join(signed)}, Signature={sig}")
    return {**{k: v for k, v in headers.items() if k != "host"}, "authorization": auth}


class AuthError(Exception):
    def __init__(self, error_type: str, message: str):
        super().__init__(message)
        self.error_type, self.message = error_type, message


def verify(rec: Recorded) -> str | None:
    """Check the request's credentials; returns the SigV4 region (None for an API key)."""
    auth = rec.header("authorization")
    if not auth:
        raise AuthError("MissingAuthenticationTokenException", "Missing Authentication Token")
    if auth.startswith("Bearer "):
        if auth[len("Bearer "):] != API_KEY:
            raise AuthError("UnrecognizedClientException", "Invalid API Key format: Must start with pre-defined prefix")
        return None
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        raise AuthError("IncompleteSignatureException", f"Authorization header requires 'Credential' parameter. Authorization={auth}")
    fields = {}
    for item in auth[len("AWS4-HMAC-SHA256 "):].split(","):
        k, _, v = item.strip().partition("=")
        fields[k] = v
    try:
        access_key, date, region, service, terminator = fields["Credential"].split("/")
        signed = fields["SignedHeaders"].split(";")
        given = fields["Signature"]
    except (KeyError, ValueError):
        raise AuthError("IncompleteSignatureException", f"Authorization header is malformed. Authorization={auth}")
    if access_key != ACCESS_KEY_ID:
        raise AuthError("UnrecognizedClientException", "The security token included in the request is invalid.")
    amz_date = rec.header("x-amz-date") or ""
    if service != SERVICE or terminator != "aws4_request" or date != amz_date[:8]:
        raise AuthError("InvalidSignatureException",
                        f"Credential should be scoped to a valid region and service '{SERVICE}'. ")
    if "host" not in signed or "x-amz-date" not in signed or signed != sorted(signed):
        raise AuthError("InvalidSignatureException", "'Host' and 'X-Amz-Date' must be signed, in sorted order.")
    if rec.header("x-amz-security-token") is not None and "x-amz-security-token" not in signed:
        raise AuthError("InvalidSignatureException", "'X-Amz-Security-Token' must be signed.")
    try:
        when = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        raise AuthError("IncompleteSignatureException", "X-Amz-Date is not in ISO8601 basic format.")
    if abs(time.time() - when) > MAX_SKEW_SECONDS:
        raise AuthError("InvalidSignatureException", f"Signature expired: {amz_date} is now earlier or later than the allowed skew.")
    headers = {}
    for k, v in rec.headers:
        headers[k.lower()] = f"{headers[k.lower()]},{v}" if k.lower() in headers else v
    want = signature(SECRET_ACCESS_KEY, rec.method, rec.path, headers, signed, rec.body, amz_date, region)
    if not hmac.compare_digest(want, given):
        raise AuthError(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret "
            "Access Key and signing method. Consult the service documentation for details.",
        )
    return region


# -- request inspection -----------------------------------------------------------------------------


class ValidationError(Exception):
    pass


def validate(req: dict):
    """The checks the real service makes that a translator is most likely to get wrong."""
    extra = sorted(set(req) - TOP_LEVEL_KEYS)
    if extra:
        raise ValidationError(f"Malformed input request: extraneous key [{extra[0]}] is not permitted, please reformat your input and try again.")
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValidationError("A conversation must start with a user message. Try again with a conversation that starts with a user message.")
    if messages[0].get("role") != "user":
        raise ValidationError("A conversation must start with a user message. Try again with a conversation that starts with a user message.")
    for a, b in zip(messages, messages[1:]):
        if a.get("role") == b.get("role"):
            raise ValidationError("A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again.")
    for m in messages:
        if not m.get("content"):
            raise ValidationError("The content field in the Message object is empty. Add a ContentBlock object to the content field and try again.")
        for block in m["content"]:
            if "text" in block and not block["text"]:
                raise ValidationError("The text field in the ContentBlock object is blank. Add text to the text field, and try again.")
    uses_tools = any("toolUse" in b or "toolResult" in b for m in messages for b in m["content"])
    if uses_tools and not (req.get("toolConfig") or {}).get("tools"):
        raise ValidationError("The toolConfig field must be defined when using toolUse and toolResult content blocks.")


def last_user_text(req: dict) -> str:
    for m in reversed(req.get("messages") or []):
        if m.get("role") == "user":
            texts = [b["text"] for b in m.get("content") or [] if "text" in b]
            if texts:
                return " ".join(texts)
    return ""


def last_tool_result(req: dict) -> str | None:
    messages = req.get("messages") or []
    if not messages:
        return None
    results = [b["toolResult"] for b in messages[-1].get("content") or [] if "toolResult" in b]
    if not results:
        return None
    return " ".join(c.get("text", "") for c in results[-1].get("content") or [] if isinstance(c, dict))


def first_tool(req: dict) -> str | None:
    for t in (req.get("toolConfig") or {}).get("tools") or []:
        name = (t.get("toolSpec") or {}).get("name")
        if name:
            return name
    return None


# -- server ---------------------------------------------------------------------------------------


class _Handler(MockHandler):
    server_version = "mock-bedrock"

    def do_GET(self):
        self._record()
        self._error(404, "UnknownOperationException", "")

    def do_POST(self):
        rec = self._record()
        try:
            verify(rec)
        except AuthError as e:
            return self._error(403, e.error_type, e.message)
        parts = urlsplit(rec.path).path.split("/")
        if len(parts) != 4 or parts[1] != "model" or parts[3] not in ("converse", "converse-stream"):
            return self._error(404, "UnknownOperationException", "")
        model, stream = unquote(parts[2]), parts[3] == "converse-stream"
        try:
            req = json.loads(rec.body)
            assert isinstance(req, dict)
        except Exception:
            return self._error(400, "SerializationException", "Unexpected end of input or malformed JSON.")
        if model == "bad-model":
            return self._json(400, ERROR_400_BODY, [("x-amzn-ErrorType", "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/")])
        try:
            validate(req)
        except ValidationError as e:
            return self._error(400, "ValidationException", str(e))
        if model == "fail-429":
            return self._error(429, "ThrottlingException", "Too many requests, please wait before trying again.", [("retry-after", "7")])
        if model == "fail-500":
            return self._error(500, "InternalServerException", "The system encountered an unexpected error during processing. Try your request again.")

        thinking = ((req.get("additionalModelRequestFields") or {}).get("thinking") or {}).get("type") == "enabled"
        tool_text = last_tool_result(req)
        tool = first_tool(req)
        if model == "slow-stream":
            return self._stream(self._text_frames([f"slow{i} " for i in range(SLOW_CHUNKS)], False), delay=SLOW_INTERVAL)
        if model == "break-stream":
            frames = self._text_frames([f"part{i} " for i in range(BREAK_AFTER + 3)], False)
            return self._stream(frames, abort_after=1 + BREAK_AFTER)
        if model == "fail-stream-throttle":
            frames = self._text_frames(["one ", "two ", "three"], False)[:3]
            frames.append(exception_frame("throttlingException", "Too many tokens, please wait before trying again."))
            return self._stream(frames)

        if tool_text is None and tool:
            if stream:
                return self._stream(self._tool_frames(tool, thinking))
            return self._json(200, self._tool_body(tool, thinking))
        text = tool_result_reply(tool_text) if tool_text is not None else reply_text(last_user_text(req))
        if stream:
            return self._stream(self._text_frames(stream_pieces(text), thinking))
        return self._json(200, self._text_body(text, thinking))

    # -- bodies -------------------------------------------------------------------------------------

    @staticmethod
    def _reasoning_block() -> dict:
        return {"reasoningContent": {"reasoningText": dict(RECORDED_REASONING)}}

    def _text_body(self, text: str, thinking: bool) -> bytes:
        body = copy.deepcopy(TEXT_RESPONSE)
        content = [{"text": text}]
        if thinking:
            content.insert(0, self._reasoning_block())
        body["output"]["message"]["content"] = content
        return json.dumps(body, indent=2).encode()

    def _tool_body(self, tool: str, thinking: bool) -> bytes:
        body = copy.deepcopy(TOOL_RESPONSE)
        content = [{"toolUse": {"input": {"city": "Paris"}, "name": tool, "toolUseId": RECORDED_TOOL_USE_ID}}]
        if thinking:
            content.insert(0, self._reasoning_block())
        body["output"]["message"]["content"] = content
        return json.dumps(body, separators=(",", ":")).encode()

    @staticmethod
    def _reasoning_frames() -> list:
        text = RECORDED_REASONING["text"]
        pieces = [text[i : i + 20] for i in range(0, len(text), 20)]
        frames = [event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": p}}}) for p in pieces]
        frames.append(event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": RECORDED_STREAM_SIGNATURE}}}))
        frames.append(event_frame("contentBlockStop", {"contentBlockIndex": 0}))
        return frames

    def _text_frames(self, pieces: list, thinking: bool) -> list:
        usage = TEXT_EVENTS[-1]["payload"]
        frames = [event_frame("messageStart", {"role": "assistant"})]
        index = 0
        if thinking:
            frames += self._reasoning_frames()
            index = 1
        frames += [event_frame("contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": p}}) for p in pieces]
        frames.append(event_frame("contentBlockStop", {"contentBlockIndex": index}))
        frames.append(event_frame("messageStop", {"stopReason": "end_turn"}))
        frames.append(event_frame("metadata", {"metrics": usage["metrics"], "usage": usage["usage"]}))
        return frames

    def _tool_frames(self, tool: str, thinking: bool) -> list:
        usage = TOOL_EVENTS[-1]["payload"]
        frames = [event_frame("messageStart", {"role": "assistant"})]
        index = 0
        if thinking:
            frames += self._reasoning_frames()
            index = 1
        start = {"toolUse": {"name": tool, "toolUseId": RECORDED_TOOL_USE_ID}}
        frames.append(event_frame("contentBlockStart", {"contentBlockIndex": index, "start": start}))
        for piece in ('{"city":', '"Paris"}'):
            frames.append(event_frame("contentBlockDelta", {"contentBlockIndex": index, "delta": {"toolUse": {"input": piece}}}))
        frames.append(event_frame("contentBlockStop", {"contentBlockIndex": index}))
        frames.append(event_frame("messageStop", {"stopReason": "tool_use"}))
        frames.append(event_frame("metadata", {"metrics": usage["metrics"], "usage": usage["usage"]}))
        return frames

    # -- wire ---------------------------------------------------------------------------------------

    def _common_headers(self):
        self.send_header("x-amzn-RequestId", f"00000000-0000-4000-8000-{time.monotonic_ns() % 10**12:012d}")
        self.send_header("Date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()))

    def _error(self, status: int, error_type: str, message: str, extra=()):
        body = json.dumps({"message": message}, separators=(",", ":")).encode() if message else b"{}"
        headers = [("x-amzn-ErrorType", f"{error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/"), *extra]
        self._json(status, body, headers)

    def _stream(self, frames: list, delay: float = 0.0, abort_after: int | None = None):
        """One event-stream message per HTTP chunk. `delay` sleeps between text deltas;
        `abort_after` cuts the connection after that many messages."""
        headers = [
            ("Content-Type", "application/vnd.amazon.eventstream"),
            ("Transfer-Encoding", "chunked"),
            ("x-amzn-bedrock-content-type", "application/json"),
        ]
        self._send_chunked(headers, _stream_chunks(frames, delay, abort_after))


def _stream_chunks(frames: list, delay: float, abort_after: int | None):
    texts = 0
    for n, frame in enumerate(frames):
        if abort_after is not None and n == abort_after:
            yield ABORT
            return
        is_text = b'"delta":{"text"' in frame
        if is_text and delay and texts:
            time.sleep(delay)
        texts += is_text
        yield frame


class MockBedrock(MockUpstream):
    """The server: `mock_openai.MockUpstream` (start/stop/port/requests/matching/find/describe_last)
    with the Bedrock handler."""

    HANDLER = _Handler
    NAME = "mock-bedrock"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


if __name__ == "__main__":  # manual use: python tests/clients/mock_bedrock.py
    m = MockBedrock().start()
    mock_common.run_manually(m, f"mock Bedrock upstream on {m.base_url} (Ctrl-C to stop)")
