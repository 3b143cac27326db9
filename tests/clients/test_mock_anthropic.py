"""The mock Anthropic upstream driven by the official `anthropic` SDK with no gateway in between:
if these fail the mock is wrong, not the gateway. They pin the behaviours the gateway tests rely on.

Run alone: `python -m pytest test_mock_anthropic.py -q -p no:cacheprovider` (needs no gateway)."""

import time

import anthropic
import httpx
import pytest

from mock_anthropic import API_KEY, THINKING_BLOCK, MockAnthropic, reply_text, tool_result_reply

HI = [{"role": "user", "content": "hi"}]
TOOLS = [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
HEADERS = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01", "content-type": "application/json"}


@pytest.fixture(scope="module")
def mock():
    m = MockAnthropic().start()
    yield m
    m.stop()


@pytest.fixture(scope="module")
def client(mock):
    return anthropic.Anthropic(base_url=f"http://127.0.0.1:{mock.port}", api_key=API_KEY, max_retries=0)


def test_text(client, mock):
    r = client.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=HI)
    assert r.content[0].type == "text" and r.content[0].text == reply_text("hi")
    assert r.stop_reason == "end_turn" and r.id.startswith("msg_") and r.model == "claude-haiku-4-5"
    assert r.usage.input_tokens == 12 and r.usage.output_tokens == 29
    rec = mock.requests[-1]
    assert rec.path == "/v1/messages" and rec.header("anthropic-version") == "2026-10-21"


def test_text_stream(client):
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=64, messages=HI) as s:
        types = [e.type for e in s]
        final = s.get_final_message()
    assert final.content[0].text == reply_text("hi")
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 10
    assert types[0] == "message_start" and "content_block_delta" in types and types[-1] == "message_stop"
    raw = [e.type for e in client.messages.create(model="m", max_tokens=64, messages=HI, stream=True)]
    assert raw[:3] == ["message_start", "content_block_start", "content_block_delta"]  # the SDK hides `ping`


def test_stream_framing_as_recorded(mock):
    body = {"model": "m", "max_tokens": 8, "messages": HI, "stream": True}
    r = httpx.post(f"http://127.0.0.1:{mock.port}/v1/messages", json=body, headers=HEADERS)
    assert r.headers["content-type"].startswith("text/event-stream")
    blocks = r.text.split("\n\n")
    assert blocks[-1] == ""
    assert all(b.startswith("event: ") and "\ndata: " in b for b in blocks[:-1])
    assert 'data: {"type": "ping"}' in r.text
    assert '"index":0 ' in r.text, "padding spaces before the closing brace"


def test_tools(client):
    r = client.messages.create(model="m", max_tokens=64, messages=HI, tools=TOOLS)
    assert r.stop_reason == "tool_use"
    block = r.content[0]
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "Paris"}
    assert block.id.startswith("toolu_")
    with client.messages.stream(model="m", max_tokens=64, messages=HI, tools=TOOLS) as s:
        final = s.get_final_message()
    assert final.content[0].input == {"city": "Paris"} and final.stop_reason == "tool_use"
    other = [{"name": "lookup", "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}]
    assert client.messages.create(model="m", max_tokens=64, messages=HI, tools=other).content[0].input == {"query": "Paris"}


def test_tool_result(client):
    messages = HI + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
    ]
    r = client.messages.create(model="m", max_tokens=64, messages=messages, tools=TOOLS)
    assert r.content[0].text == tool_result_reply("sunny")
    with client.messages.stream(model="m", max_tokens=64, messages=messages, tools=TOOLS) as s:
        assert s.get_final_text() == tool_result_reply("sunny")


def test_thinking(client):
    thinking = {"type": "enabled", "budget_tokens": 1024}
    r = client.messages.create(model="m", max_tokens=2048, messages=HI, thinking=thinking)
    assert r.content[0].type == "thinking" and r.content[0].signature == THINKING_BLOCK["signature"]
    assert r.content[1].text == reply_text("hi")
    with client.messages.stream(model="m", max_tokens=2048, messages=HI, thinking=thinking) as s:
        final = s.get_final_message()
    assert final.content[0].thinking == "Let me think." and final.content[0].signature
    assert final.content[1].text == reply_text("hi")


def test_slow_stream(client):
    stamps = []
    with client.messages.stream(model="slow-stream", max_tokens=64, messages=HI) as s:
        for text in s.text_stream:
            stamps.append((time.monotonic(), text))
    assert len(stamps) == 6
    assert stamps[-1][0] - stamps[0][0] >= 5 * 0.3


def test_errors(client, mock):
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.create(model="fail-429", max_tokens=8, messages=HI)
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.body["error"]["type"] == "rate_limit_error"
    with pytest.raises(anthropic.InternalServerError) as info:
        client.messages.create(model="fail-500", max_tokens=8, messages=HI)
    assert info.value.status_code == 500 and info.value.body["error"]["type"] == "api_error"
    with pytest.raises(anthropic.OverloadedError) as info:
        client.messages.create(model="fail-overloaded", max_tokens=8, messages=HI)
    assert info.value.body["error"]["type"] == "overloaded_error"
    # The SDK's transport (httpx2) raises its own RemoteProtocolError for the cut chunked body.
    texts = []
    with pytest.raises(Exception, match="incomplete chunked read|peer closed|Connection"):
        with client.messages.stream(model="break-stream", max_tokens=8, messages=HI) as s:
            texts.extend(s.text_stream)
    assert texts == ["part0 ", "part1 ", "part2 "]
    r = httpx.post(f"http://127.0.0.1:{mock.port}/v1/messages", json={"model": "m", "messages": HI}, headers=HEADERS)
    assert r.status_code == 400 and r.json()["error"]["message"] == "max_tokens: Field required"


def test_auth_and_version(mock):
    bad = anthropic.Anthropic(base_url=f"http://127.0.0.1:{mock.port}", api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        bad.messages.create(model="m", max_tokens=8, messages=HI)
    assert info.value.body["error"]["message"] == "invalid x-api-key"
    url = f"http://127.0.0.1:{mock.port}/v1/messages"
    body = {"model": "m", "max_tokens": 8, "messages": HI}
    r = httpx.post(url, json=body, headers={k: v for k, v in HEADERS.items() if k != "anthropic-version"})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = httpx.post(url, json=body, headers={k: v for k, v in HEADERS.items() if k != "x-api-key"})
    assert r.status_code == 401 and r.json()["type"] == "error" and r.json()["request_id"].startswith("req_")
    assert httpx.post(f"http://127.0.0.1:{mock.port}/v1/other", json=body, headers=HEADERS).status_code == 404
    # The gateway's headers (x-api-key, 2023-06-01) with sampling parameters are accepted ...
    ok = httpx.post(url, json=dict(body, temperature=0.2, top_p=0.9), headers=HEADERS)
    assert ok.status_code == 200 and ok.json()["type"] == "message"
    # ... and the SDK's (Bearer, 2026-10-21) reject them, as the real API does.
    sdk = {"authorization": f"Bearer {API_KEY}", "anthropic-version": "2026-10-21"}
    r = httpx.post(url, json=dict(body, temperature=0.2), headers=sdk)
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("temperature")


def test_models(client):
    assert "claude-sonnet-4-5-20250929" in [m.id for m in client.models.list().data]
