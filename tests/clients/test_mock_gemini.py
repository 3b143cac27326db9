"""The mock Gemini upstream itself, driven with httpx and no gateway in between: if these fail the
mock is wrong, not the gateway. They pin the wire format the gateway's Gemini translator meets."""

import json

import httpx
import pytest

from mock_gemini import API_KEY, ERROR_429_BODY, SIGNATURE, SLOW_CHUNKS, MockGemini, reply_text, tool_result_reply

HI = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
TOOLS = [{"functionDeclarations": [{"name": "get_weather", "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}}}]}]


@pytest.fixture(scope="module")
def gemini():
    m = MockGemini().start()
    yield m
    m.stop()


@pytest.fixture(scope="module")
def http(gemini):
    with httpx.Client(base_url=f"http://127.0.0.1:{gemini.port}", headers={"x-goog-api-key": API_KEY}, timeout=10) as c:
        yield c


def generate(http, model, body, **kw):
    return http.post(f"/v1beta/models/{model}:generateContent", json=body, **kw)


def stream_events(http, model, body):
    """(raw body, parsed data payloads) of an alt=sse stream."""
    with http.stream("POST", f"/v1beta/models/{model}:streamGenerateContent?alt=sse", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream"
        raw = r.read()
    blocks = raw.decode().split("\r\n\r\n")
    assert blocks[-1] == "", "every event ends with CRLF CRLF"
    events = [json.loads(b[len("data: ") :]) for b in blocks[:-1]]
    assert all(b.startswith("data: ") and "\n" not in b.replace("\r\n", "") for b in blocks[:-1])
    return raw, events


def text_of(events, thought=False):
    return "".join(
        p.get("text", "") for e in events for p in e["candidates"][0]["content"]["parts"] if bool(p.get("thought")) == thought
    )


def test_text_answer_and_stream(http, gemini):
    r = generate(http, "gemini-2.5-flash", HI)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["candidates"][0]["content"]["parts"][0]["text"] == reply_text("hi")
    assert body["candidates"][0]["finishReason"] == "STOP"
    assert body["usageMetadata"]["totalTokenCount"] == 281 and body["modelVersion"] == "gemini-2.5-flash"
    assert body["responseId"]

    raw, events = stream_events(http, "gemini-2.5-flash", HI)
    assert b"[DONE]" not in raw and b"event:" not in raw
    assert text_of(events) == reply_text("hi")
    assert [e["candidates"][0].get("finishReason") for e in events][-1] == "STOP"
    assert all(e["candidates"][0].get("finishReason") is None for e in events[:-1])
    assert all("usageMetadata" in e for e in events)
    assert events[-1]["candidates"][0]["content"]["parts"][0]["thoughtSignature"]
    rec = gemini.requests[-1]
    assert rec.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert rec.header("x-goog-api-key") == API_KEY


def test_thoughts_when_asked(http):
    body = dict(HI, generationConfig={"thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": True}})
    parts = generate(http, "gemini-2.5-pro", body).json()["candidates"][0]["content"]["parts"]
    assert parts[0]["thought"] is True and parts[1]["text"] == reply_text("hi")
    _, events = stream_events(http, "gemini-2.5-pro", body)
    assert text_of(events, thought=True) and text_of(events) == reply_text("hi")


def test_tool_call_and_round_trip(http):
    body = dict(HI, tools=TOOLS)
    part = generate(http, "gemini-3-pro-preview", body).json()["candidates"][0]["content"]["parts"][0]
    assert part["functionCall"] == {"name": "get_weather", "args": {"city": "Paris"}}
    assert part["thoughtSignature"] == SIGNATURE
    _, events = stream_events(http, "gemini-3-pro-preview", body)
    assert events[0]["candidates"][0]["content"]["parts"][0]["functionCall"]["name"] == "get_weather"
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"

    history = {
        "contents": [
            HI["contents"][0],
            {"role": "model", "parts": [part]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}}]},
        ],
        "tools": TOOLS,
    }
    r = generate(http, "gemini-3-pro-preview", history)
    assert r.json()["candidates"][0]["content"]["parts"][0]["text"] == tool_result_reply("sunny")
    # Gemini 3 refuses a replayed call without its signature.
    del history["contents"][1]["parts"][0]["thoughtSignature"]
    r = generate(http, "gemini-3-pro-preview", history)
    assert r.status_code == 400 and "thought_signature" in r.json()["error"]["message"]


def test_request_validation(http):
    r = generate(http, "gemini-2.5-flash", dict(HI, generationConfig={"max_tokens": 5}))
    assert r.status_code == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert 'Unknown name "max_tokens"' in r.json()["error"]["message"]
    assert generate(http, "gemini-2.5-flash", {"messages": []}).status_code == 400
    assert generate(http, "gemini-2.5-flash", {"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}).status_code == 400
    assert generate(http, "gemini-2.5-flash", dict(HI, generationConfig={"maxOutputTokens": 5, "stop_sequences": ["x"]})).status_code == 200


def test_auth(gemini):
    base = f"http://127.0.0.1:{gemini.port}/v1beta/models/gemini-2.5-flash:generateContent"
    r = httpx.post(base, json=HI)
    assert r.status_code == 403 and r.json()["error"]["status"] == "PERMISSION_DENIED"
    r = httpx.post(base, json=HI, headers={"x-goog-api-key": "wrong"})
    err = r.json()["error"]
    assert r.status_code == 400 and err["status"] == "INVALID_ARGUMENT"
    assert err["details"][0]["reason"] == "API_KEY_INVALID"
    assert httpx.post(base + f"?key={API_KEY}", json=HI).status_code == 200


def test_errors_and_broken_stream(http):
    r = generate(http, "fail-429", HI)
    assert r.status_code == 429 and r.content == ERROR_429_BODY
    retry = [d for d in r.json()["error"]["details"] if d["@type"].endswith("RetryInfo")]
    assert retry[0]["retryDelay"] == "34.4s"
    r = generate(http, "fail-500", HI)
    assert r.status_code == 500 and r.json()["error"]["status"] == "INTERNAL"
    with pytest.raises(httpx.TransportError):
        with http.stream("POST", "/v1beta/models/break-stream:streamGenerateContent?alt=sse", json=HI) as r:
            r.read()
    assert http.post("/v1beta/models/x:embedText", json=HI).status_code == 404


def test_slow_stream_and_json_array(http):
    import time

    start = time.monotonic()
    _, events = stream_events(http, "slow-stream", HI)
    assert len([e for e in events if text_of([e])]) == SLOW_CHUNKS
    assert time.monotonic() - start >= (SLOW_CHUNKS - 1) * 0.4 - 0.05
    r = http.post("/v1beta/models/gemini-2.5-flash:streamGenerateContent", json=HI)
    assert isinstance(r.json(), list) and text_of(r.json()) == reply_text("hi")


def test_models(http):
    assert "models/gemini-2.5-flash" in [m["name"] for m in http.get("/v1beta/models").json()["models"]]
