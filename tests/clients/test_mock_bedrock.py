"""The mock Bedrock upstream driven directly with httpx (no gateway): if these fail the mock is
wrong, not the gateway. They prove it speaks Converse / ConverseStream, real event-stream
framing, and checks SigV4 as AWS does."""

import json
import time
from urllib.parse import quote

import httpx
import pytest

import mock_bedrock as mb

TOOLS = {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}}]}


@pytest.fixture(scope="module")
def bedrock():
    m = mb.MockBedrock().start()
    yield m
    m.stop()


def call(bedrock, model: str, body: dict, stream: bool = False, headers: dict | None = None, sign: bool = True):
    url = f"{bedrock.base_url}/model/{quote(model, safe='')}/{'converse-stream' if stream else 'converse'}"
    raw = json.dumps(body).encode()
    h = {"content-type": "application/json"}
    if sign:
        h.update(mb.sign("POST", url, raw, extra={"content-type": "application/json"}))
    h.update(headers or {})
    return httpx.post(url, content=raw, headers=h, timeout=10)


def user(text):
    return {"messages": [{"role": "user", "content": [{"text": text}]}]}


def events(resp) -> list:
    assert resp.headers["content-type"] == "application/vnd.amazon.eventstream"
    return [(h, json.loads(p)) for h, p in mb.decode_frames(resp.content)]


def test_signer_matches_aws_suite():
    # get-vanilla and post-vanilla from AWS's SigV4 test suite.
    for method, sig in [
        ("GET", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
        ("POST", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
    ]:
        headers = {"host": "example.amazonaws.com", "x-amz-date": "20150830T123600Z"}
        got = mb.signature("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", method, "/", headers, ["host", "x-amz-date"], b"",
                           "20150830T123600Z", "us-east-1", "service")
        assert got == sig
    # The Bedrock-shaped vector the Rust signer is tested against (filters/src/sigv4.rs).
    body = b'{"messages":[{"role":"user","content":[{"text":"Hello"}]}]}'
    headers = {"content-type": "application/json", "host": "bedrock-runtime.us-east-1.amazonaws.com", "x-amz-date": "20231114T221320Z"}
    got = mb.signature("test-bedrock-secret", "POST", "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse", headers,
                       ["content-type", "host", "x-amz-date"], body, "20231114T221320Z", "us-east-1")
    assert got == "f7a275033978b0970702168d6d0baa29f4ad097d1928bcbb83e752f01c6c05d4"


def test_event_stream_codec_reproduces_fixture():
    raw = (mb.FIXTURES / "converse-stream-text.eventstream").read_bytes()
    frames = mb.decode_frames(raw)
    assert len(frames) == 33
    again = b"".join(mb.encode_frame(list(h.items()), p) for h, p in frames)
    assert again == raw
    bad = bytearray(raw)
    bad[30] ^= 1
    with pytest.raises(AssertionError):
        mb.decode_frames(bytes(bad))


def test_text(bedrock):
    r = call(bedrock, "anthropic.claude-3-haiku-20240307-v1:0", user("hi"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["output"]["message"] == {"content": [{"text": mb.reply_text("hi")}], "role": "assistant"}
    assert body["stopReason"] == "end_turn" and body["usage"]["totalTokens"] == 79
    rec = bedrock.requests[-1]
    assert rec.path == "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"


def test_stream_frames(bedrock):
    r = call(bedrock, "us.amazon.nova-micro-v1:0", user("hello there"), stream=True)
    evs = events(r)
    assert [h[":event-type"] for h, _ in evs][:2] == ["messageStart", "contentBlockDelta"]
    assert [h[":event-type"] for h, _ in evs][-3:] == ["contentBlockStop", "messageStop", "metadata"]
    assert all(list(h) == [":event-type", ":content-type", ":message-type"] for h, _ in evs)
    assert all("p" in p for _, p in evs)
    text = "".join(p["delta"].get("text", "") for h, p in evs if h[":event-type"] == "contentBlockDelta")
    assert text == mb.reply_text("hello there")
    assert evs[-1][1]["usage"]["inputTokens"] == 13


def test_tools_and_tool_result(bedrock):
    r = call(bedrock, "m", {**user("weather?"), "toolConfig": TOOLS})
    assert r.json()["stopReason"] == "tool_use"
    tu = r.json()["output"]["message"]["content"][0]["toolUse"]
    assert (tu["name"], tu["input"]) == ("get_weather", {"city": "Paris"})
    evs = events(call(bedrock, "m", {**user("weather?"), "toolConfig": TOOLS}, stream=True))
    start = next(p for h, p in evs if h[":event-type"] == "contentBlockStart")
    assert start["start"]["toolUse"]["name"] == "get_weather"
    args = "".join(p["delta"]["toolUse"]["input"] for h, p in evs if "toolUse" in p.get("delta", {}))
    assert json.loads(args) == {"city": "Paris"}
    history = {"messages": [
        {"role": "user", "content": [{"text": "weather?"}]},
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": tu["toolUseId"], "name": "get_weather", "input": {"city": "Paris"}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": tu["toolUseId"], "content": [{"text": "18C"}]}}]},
    ], "toolConfig": TOOLS}
    r = call(bedrock, "m", history)
    assert r.json()["output"]["message"]["content"] == [{"text": "Tool said: 18C"}]
    # Bedrock refuses tool blocks without toolConfig.
    r = call(bedrock, "m", {"messages": history["messages"]})
    assert r.status_code == 400 and "toolConfig" in r.json()["message"]


def test_thinking(bedrock):
    body = {**user("count"), "additionalModelRequestFields": {"thinking": {"type": "enabled", "budget_tokens": 1024}}}
    block = call(bedrock, "m", body).json()["output"]["message"]["content"][0]
    assert block["reasoningContent"]["reasoningText"]["signature"]
    evs = events(call(bedrock, "m", body, stream=True))
    deltas = [p["delta"]["reasoningContent"] for h, p in evs if "reasoningContent" in p.get("delta", {})]
    assert "".join(d.get("text", "") for d in deltas) == mb.RECORDED_REASONING["text"]
    assert deltas[-1]["signature"] == mb.RECORDED_STREAM_SIGNATURE


def test_auth_is_checked(bedrock):
    r = call(bedrock, "m", user("x"), sign=False)
    assert r.status_code == 403 and r.json() == {"message": "Missing Authentication Token"}
    assert r.headers["x-amzn-ErrorType"].startswith("MissingAuthenticationTokenException")
    url = f"{bedrock.base_url}/model/m/converse"
    raw = json.dumps(user("x")).encode()
    h = mb.sign("POST", url, raw, secret="wrong")
    r = httpx.post(url, content=raw, headers=h)
    assert r.status_code == 403 and "signature we calculated does not match" in r.json()["message"]
    h = mb.sign("POST", url, raw, access_key="AKIDOTHER")
    assert httpx.post(url, content=raw, headers=h).status_code == 403
    h = mb.sign("POST", url, raw, now=time.time() - 3600)
    assert "Signature expired" in httpx.post(url, content=raw, headers=h).json()["message"]
    h = mb.sign("POST", url, raw)
    assert httpx.post(url, content=raw + b" ", headers=h).status_code == 403  # body is signed
    token = {"x-amz-security-token": "session-token"}
    assert httpx.post(url, content=raw, headers=mb.sign("POST", url, raw, extra=token)).status_code == 200
    assert httpx.post(url, content=raw, headers={**mb.sign("POST", url, raw), **token}).status_code == 403
    assert call(bedrock, "m", user("x"), sign=False, headers={"authorization": "Bearer test-bedrock-key"}).status_code == 200
    assert call(bedrock, "m", user("x"), sign=False, headers={"authorization": "Bearer nope"}).status_code == 403


def test_errors_and_failures(bedrock):
    r = call(bedrock, "fail-429", user("x"))
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    assert r.headers["x-amzn-ErrorType"].startswith("ThrottlingException")
    assert call(bedrock, "fail-500", user("x")).status_code == 500
    r = call(bedrock, "bad-model", user("x"), stream=True)
    assert r.status_code == 400 and r.json() == {"message": "The provided model identifier is invalid."}
    assert call(bedrock, "m", {**user("x"), "foo": 1}).status_code == 400
    evs = events(call(bedrock, "fail-stream-throttle", user("x"), stream=True))
    h, p = evs[-1]
    assert h[":message-type"] == "exception" and h[":exception-type"] == "throttlingException" and p["message"]
    with pytest.raises(httpx.TransportError):
        call(bedrock, "break-stream", user("x"), stream=True)


def test_slow_stream(bedrock):
    url = f"{bedrock.base_url}/model/slow-stream/converse-stream"
    raw = json.dumps(user("x")).encode()
    t0 = time.monotonic()
    with httpx.stream("POST", url, content=raw, headers=mb.sign("POST", url, raw), timeout=10) as r:
        body = b"".join(r.iter_bytes())
    assert time.monotonic() - t0 >= 5 * mb.SLOW_INTERVAL - 0.1
    texts = [p["delta"]["text"] for h, p in ((h, json.loads(p)) for h, p in mb.decode_frames(body)) if "text" in p.get("delta", {})]
    assert len(texts) == mb.SLOW_CHUNKS
