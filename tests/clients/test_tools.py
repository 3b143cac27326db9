"""Tool calling through the gateway: whole and streamed, a tool-result round trip, and two
parallel tool calls streamed (index-keyed argument fragments must arrive intact)."""

import json

from mock_openai import TOOL_COMPLETION, TOOL_STREAM, parallel_tool_calls, tool_result_reply, tool_stream_arguments
from support import marker

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def _assemble_tool_calls(chunks):
    calls = {}
    finish = None
    for c in chunks:
        for ch in c.choices:
            finish = ch.finish_reason or finish
            for tc in ch.delta.tool_calls or []:
                slot = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                if tc.id:
                    slot["id"] = tc.id
                if tc.function and tc.function.name:
                    slot["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    slot["arguments"] += tc.function.arguments
    return [calls[i] for i in sorted(calls)], finish


def test_tool_call_non_stream(client, upstream):
    m = marker()
    r = client.chat.completions.create(
        model="openai:gpt-4o-mini",
        messages=[{"role": "user", "content": f"weather in Boston? {m}"}],
        tools=TOOLS,
        tool_choice="auto",
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls
    expected = TOOL_COMPLETION["choices"][0]["message"]["tool_calls"][0]
    assert call.id == expected["id"]
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == json.loads(expected["function"]["arguments"])
    body = upstream.find(m).json()
    assert body["tools"] == TOOLS, "tool definitions must reach the upstream unchanged"
    assert body["tool_choice"] == "auto"


def test_tool_call_streamed(client):
    stream = client.chat.completions.create(
        model="openai:gpt-4o-mini",
        messages=[{"role": "user", "content": "weather in San Francisco?"}],
        tools=TOOLS,
        stream=True,
    )
    chunks = list(stream)
    calls, finish = _assemble_tool_calls(chunks)
    assert finish == "tool_calls"
    assert len(calls) == 1
    assert calls[0]["name"] == "get_weather"
    assert calls[0]["id"] == "call_CTf1nWJLqSeRgDqaCG27xZ74"
    assert calls[0]["arguments"] == tool_stream_arguments(TOOL_STREAM), "argument fragments lost or reordered"
    json.loads(calls[0]["arguments"])
    assert not [c for c in chunks if not c.choices], "usage chunk not stripped"


def test_tool_result_round_trip(client, upstream):
    m = marker()
    messages = [{"role": "user", "content": f"weather in Boston? {m}"}]
    first = client.chat.completions.create(model="openai:gpt-4o-mini", messages=messages, tools=TOOLS)
    call = first.choices[0].message.tool_calls[0]
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    result = json.dumps({"temperature_f": 41, "conditions": "drizzle", "marker": m})
    messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    second = client.chat.completions.create(model="openai:gpt-4o-mini", messages=messages, tools=TOOLS)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == tool_result_reply(result)
    reqs = upstream.matching(m)
    assert len(reqs) == 2, [r.summary() for r in reqs]
    sent = reqs[1].json()["messages"]
    assert sent[1]["role"] == "assistant" and sent[1]["tool_calls"][0]["id"] == call.id
    assert sent[2] == {"role": "tool", "tool_call_id": call.id, "content": result}


def test_tool_result_round_trip_streamed(client):
    messages = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "-3C and snow"},
    ]
    chunks = list(client.chat.completions.create(model="openai:gpt-4o-mini", messages=messages, tools=TOOLS, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == tool_result_reply("-3C and snow")


def test_parallel_tool_calls_streamed(client, upstream):
    m = marker()
    stream = client.chat.completions.create(
        model="openai:parallel-tools",
        messages=[{"role": "user", "content": f"weather in Edinburgh and New York? {m}"}],
        tools=TOOLS,
        parallel_tool_calls=True,
        stream=True,
    )
    chunks = list(stream)
    calls, finish = _assemble_tool_calls(chunks)
    assert finish == "tool_calls"
    assert calls == parallel_tool_calls(), "parallel tool calls were not forwarded intact"
    assert len(calls) == 2
    for c in calls:
        json.loads(c["arguments"])
    assert not [c for c in chunks if not c.choices], "usage chunk not stripped"
    assert upstream.find(m).json()["parallel_tool_calls"] is True


def test_parallel_tool_calls_streamed_with_usage(client):
    chunks = list(
        client.chat.completions.create(
            model="openai:parallel-tools",
            messages=[{"role": "user", "content": "two cities"}],
            tools=TOOLS,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    calls, _ = _assemble_tool_calls(chunks)
    assert calls == parallel_tool_calls()
    usage = [c for c in chunks if not c.choices]
    assert len(usage) == 1 and usage[0].usage.total_tokens == 209
