"""The mock upstream itself, driven by the SDK with no gateway in between: if these fail the
mock is wrong, not the gateway. They pin the behaviours the gateway tests rely on."""

import json

import httpx
import openai
import pytest

import support
from mock_openai import PARALLEL_STREAM, TOOL_STREAM, parallel_tool_calls, reply_text, tool_stream_arguments

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def direct(upstream):
    return support.sdk(f"http://127.0.0.1:{upstream.port}/v1", api_key="sk-direct")


def _stream(direct, **kw):
    return list(direct.chat.completions.create(stream=True, **kw))


def test_mock_text_and_stream(direct):
    assert direct.chat.completions.create(model="gpt-4o-mini", messages=HI).choices[0].message.content == reply_text("hi")
    for model in ("gpt-4o-mini", "split-stream"):
        chunks = _stream(direct, model=model, messages=HI)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply_text("hi")
        assert not [c for c in chunks if not c.choices]
        chunks = _stream(direct, model=model, messages=HI, stream_options={"include_usage": True})
        assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 44


def test_mock_tools(direct):
    r = direct.chat.completions.create(model="gpt-4o-mini", messages=HI, tools=TOOLS)
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"
    chunks = _stream(direct, model="gpt-4o-mini", messages=HI, tools=TOOLS)
    args = "".join(tc.function.arguments or "" for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or [])
    assert args == tool_stream_arguments(TOOL_STREAM)
    json.loads(args)
    assert len(parallel_tool_calls()) == 2
    assert tool_stream_arguments(PARALLEL_STREAM, 1)
    r = direct.chat.completions.create(model="parallel-tools", messages=HI, tools=TOOLS)
    assert [c.function.name for c in r.choices[0].message.tool_calls] == [c["name"] for c in parallel_tool_calls()]


def test_mock_errors(direct):
    with pytest.raises(openai.InternalServerError):
        direct.chat.completions.create(model="fail-500", messages=HI)
    with pytest.raises(openai.RateLimitError) as info:
        direct.chat.completions.create(model="fail-429", messages=HI)
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.code == "insufficient_quota"
    with pytest.raises((openai.APIConnectionError, httpx.TransportError)):
        list(direct.chat.completions.create(model="break-stream", messages=HI, stream=True))


def test_mock_models(direct):
    assert "gpt-4o-mini" in [m.id for m in direct.models.list().data]
