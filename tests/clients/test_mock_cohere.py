"""The mock Cohere upstream itself, driven with httpx and no gateway in between: if these fail the
mock is wrong, not the gateway. They pin the wire format the gateway's Cohere translator reads."""

import json
import time

import httpx
import pytest

from mock_cohere import (
    API_KEY,
    BREAK_AFTER,
    RETRY_AFTER,
    SLOW_CHUNKS,
    SLOW_INTERVAL,
    TOOL_ARGUMENTS,
    MockCohere,
    reply_text,
    tool_plan,
    tool_result_reply,
)

HI = [{"role": "user", "content": "hi"}]
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
    }
]


@pytest.fixture(scope="module")
def cohere():
    m = MockCohere().start()
    yield m
    m.stop()


@pytest.fixture(scope="module")
def http(cohere):
    with httpx.Client(
        base_url=f"http://127.0.0.1:{cohere.port}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
    ) as c:
        yield c


def chat(http, **body):
    return http.post("/v2/chat", json={"model": "command-a-03-2025", "messages": HI, **body})


def sse(http, **body):
    """(event, data) pairs of a streamed answer, parsed per the SSE spec."""
    events = []
    with http.stream("POST", "/v2/chat", json={"model": "command-a-03-2025", "messages": HI, "stream": True, **body}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        event, data = None, []
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
            elif line == "" and data:
                payload = "\n".join(data)
                events.append((event, payload if payload == "[DONE]" else json.loads(payload)))
                event, data = None, []
    return events


def test_text(http):
    r = chat(http, messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}])
    assert r.status_code == 200
    body = r.json()
    assert list(body) == ["id", "message", "finish_reason", "usage"]
    assert body["message"]["content"] == [{"type": "text", "text": reply_text("hello there")}]
    assert body["finish_reason"] == "COMPLETE"
    assert body["usage"]["tokens"]["input_tokens"] > 0 and "billed_units" in body["usage"]


def test_text_stream(http):
    events = sse(http, messages=[{"role": "user", "content": [{"type": "text", "text": "hello there"}]}])
    names = [e for e, _ in events]
    assert names[:2] == ["message-start", "content-start"] and names[-3:] == ["content-end", "message-end", None]
    assert events[-1][1] == "[DONE]"
    for name, payload in events[:-1]:
        assert payload["type"] == name
    text = "".join(p["delta"]["message"]["content"]["text"] for e, p in events if e == "content-delta")
    assert text == reply_text("hello there")
    end = events[-2][1]["delta"]
    assert end["finish_reason"] == "COMPLETE" and end["usage"]["tokens"]["output_tokens"] > 0


def test_tool_call(http):
    body = chat(http, tools=TOOLS).json()
    assert body["finish_reason"] == "TOOL_CALL"
    assert body["message"]["tool_plan"] == tool_plan()
    (call,) = body["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert call["id"].startswith("get_weather_")
    assert json.loads(call["function"]["arguments"]) == TOOL_ARGUMENTS
    # NONE forbids tools: a direct answer.
    assert chat(http, tools=TOOLS, tool_choice="NONE").json()["finish_reason"] == "COMPLETE"


def test_tool_call_stream(http):
    events = sse(http, tools=TOOLS)
    plan = "".join(p["delta"]["message"]["tool_plan"] for e, p in events if e == "tool-plan-delta")
    assert plan == tool_plan()
    (start,) = [p for e, p in events if e == "tool-call-start"]
    assert start["delta"]["message"]["tool_calls"]["function"]["name"] == "get_weather"
    args = "".join(p["delta"]["message"]["tool_calls"]["function"]["arguments"] for e, p in events if e == "tool-call-delta")
    assert json.loads(args) == TOOL_ARGUMENTS
    assert [e for e, _ in events][-3:] == ["tool-call-end", "message-end", None]
    assert events[-2][1]["delta"]["finish_reason"] == "TOOL_CALL"


def test_tool_result(http):
    messages = HI + [
        {
            "role": "assistant",
            "tool_plan": "I will check.",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    body = chat(http, messages=messages, tools=TOOLS).json()
    assert body["message"]["content"][0]["text"] == tool_result_reply("sunny") == "Tool said: sunny"
    events = sse(http, messages=messages, tools=TOOLS)
    text = "".join(p["delta"]["message"]["content"]["text"] for e, p in events if e == "content-delta")
    assert text == "Tool said: sunny"


def test_auth(cohere):
    url = f"http://127.0.0.1:{cohere.port}/v2/chat"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        r = httpx.post(url, json={"model": "m", "messages": HI}, headers=headers)
        assert r.status_code == 401
        assert set(r.json()) == {"id", "message"} and r.json()["message"] == "invalid api token"


def test_errors(http):
    r = chat(http, model="fail-429")
    assert r.status_code == 429 and r.headers["retry-after"] == RETRY_AFTER
    assert "Trial key" in r.json()["message"]
    r = chat(http, model="fail-500")
    assert r.status_code == 500 and set(r.json()) == {"id", "message"}
    r = chat(http, model="nonexistent-model")
    assert r.status_code == 404 and "nonexistent-model" in r.json()["message"]
    # The checks the real API makes on what a translator sends.
    for bad in ({"tool_choice": "AUTO", "tools": TOOLS}, {"p": 1.0}, {"top_p": 0.5}, {"tool_choice": "REQUIRED"}):
        r = chat(http, **bad)
        assert r.status_code == 400 and r.json()["message"].startswith("invalid request"), bad
    r = chat(http, messages=[{"role": "developer", "content": "x"}])
    assert r.status_code == 400
    assert http.post("/v2/chat", content=b"{nope").status_code == 400
    assert http.post("/v1/chat/completions", json={}).status_code == 404


def test_slow_stream(http):
    t0 = time.monotonic()
    events = sse(http, model="slow-stream")
    deltas = [p for e, p in events if e == "content-delta"]
    assert len(deltas) == SLOW_CHUNKS
    assert time.monotonic() - t0 >= (SLOW_CHUNKS - 1) * SLOW_INTERVAL * 0.9
    assert events[-1][1] == "[DONE]"


def test_break_stream(http):
    seen = []
    with pytest.raises(httpx.HTTPError):
        with http.stream("POST", "/v2/chat", json={"model": "break-stream", "messages": HI, "stream": True}) as r:
            for line in r.iter_lines():
                seen.append(line)
    text = "\n".join(seen)
    assert text.count("event: content-delta") == BREAK_AFTER
    assert "message-end" not in text and "[DONE]" not in text


def test_recording(cohere, http):
    chat(http, messages=[{"role": "user", "content": "marker-7f3a"}])
    rec = cohere.find("marker-7f3a")
    assert rec.method == "POST" and rec.path == "/v2/chat"
    assert rec.header("authorization") == f"Bearer {API_KEY}"
    assert rec.json()["messages"][0]["content"] == "marker-7f3a"
    assert "marker-7f3a" in cohere.describe_last(1)
