"""Native providers through the gateway: the official `openai` SDK talks Chat Completions and the
Responses API to `anthropic:`, `gemini:`, `bedrock:` and `cohere:` models; the gateway translates
to each provider's own wire (faithful mock upstreams in mock_<provider>.py) and back.

Also the native pass-through routes: the `anthropic` SDK with the gateway as its base URL, and a
Gemini `generateContent` call with the virtual key where Google's SDKs put theirs.
"""

from __future__ import annotations

import json
import time

import anthropic
import httpx
import openai
import pytest

import support
import test_metrics
from support import marker

MODELS = {
    "anthropic": "anthropic:claude-sonnet-4-5",
    "gemini": "gemini:gemini-2.5-flash",
    "bedrock": "bedrock:us.anthropic.claude-sonnet-4-20250514-v1:0",
    "cohere": "cohere:command-a-03-2025",
}
PROVIDERS = list(MODELS)
# What each provider's own key looks like at its upstream (never the caller's virtual key).
UPSTREAM_AUTH = {
    "anthropic": ("x-api-key", "test-anthropic-key"),
    "gemini": ("x-goog-api-key", "test-gemini-key"),
    "cohere": ("authorization", "Bearer test-cohere-key"),
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def model_for(provider: str, behaviour: str | None = None) -> str:
    return f"{provider}:{behaviour}" if behaviour else MODELS[provider]


def check_upstream_auth(provider: str, rec) -> None:
    assert rec.header("authorization") != f"Bearer {support.KEY_ALL}", "the caller's virtual key leaked upstream"
    if provider == "bedrock":
        auth = rec.header("authorization") or ""
        assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDTESTBEDROCK/"), auth
        assert "/us-east-1/bedrock/aws4_request" in auth, auth
    else:
        name, value = UPSTREAM_AUTH[provider]
        assert rec.header(name) == value, f"{name}: {rec.header(name)!r}"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_chat(client, natives, provider):
    m = marker()
    r = client.chat.completions.create(model=MODELS[provider], messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": f"hello {m}"},
    ])
    assert r.object == "chat.completion"
    assert r.choices[0].message.content == f"Mock upstream reply to: hello {m}"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    rec = natives[provider].find(m)
    check_upstream_auth(provider, rec)
    body = json.dumps(rec.json()) if rec.body else ""
    assert provider + ":" not in body and provider + ":" not in rec.path, "the provider prefix reached the upstream"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_chat_stream_with_usage(client, natives, provider):
    m = marker()
    stream = client.chat.completions.create(
        model=MODELS[provider],
        messages=[{"role": "user", "content": f"stream {m}"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text == f"Mock upstream reply to: stream {m}"
    assert finish == "stop"
    assert usage is not None and usage.total_tokens > 0
    natives[provider].find(m)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_tool_round_trip(client, natives, provider, stream):
    m = marker()
    messages = [{"role": "user", "content": f"What is the weather in Paris? {m}"}]
    if stream:
        calls: dict[int, dict] = {}
        finish = None
        for chunk in client.chat.completions.create(model=MODELS[provider], messages=messages, tools=[WEATHER_TOOL], stream=True):
            for c in chunk.choices:
                finish = c.finish_reason or finish
                for tc in c.delta.tool_calls or []:
                    slot = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                    slot["id"] = tc.id or slot["id"]
                    if tc.function:
                        slot["name"] = tc.function.name or slot["name"]
                        slot["arguments"] += tc.function.arguments or ""
        assert finish == "tool_calls"
        assert len(calls) == 1, calls
        call = calls[0]
        assistant = {"role": "assistant", "content": None, "tool_calls": [
            {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}]}
    else:
        r = client.chat.completions.create(model=MODELS[provider], messages=messages, tools=[WEATHER_TOOL])
        assert r.choices[0].finish_reason == "tool_calls"
        tc = r.choices[0].message.tool_calls[0]
        call = {"id": tc.id, "name": tc.function.name, "arguments": tc.function.arguments}
        # Echo the message back as an app would (extra members such as thinking blocks included).
        assistant = r.choices[0].message.model_dump(exclude_none=True)
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris"}
    assert call["id"]
    messages += [assistant, {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 C"}]
    r = client.chat.completions.create(model=MODELS[provider], messages=messages, tools=[WEATHER_TOOL])
    assert r.choices[0].message.content == "Tool said: sunny, 21 C"
    assert r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_responses_api(client, natives, provider):
    m = marker()
    r = client.responses.create(model=MODELS[provider], instructions="Be brief.", input=f"respond {m}")
    assert r.object == "response" and r.status == "completed"
    assert r.output_text == f"Mock upstream reply to: respond {m}"
    assert r.id.startswith("resp_")
    assert r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    rec = natives[provider].find(m)
    check_upstream_auth(provider, rec)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_responses_api_stream(client, natives, provider):
    m = marker()
    types, deltas, final = [], "", None
    for ev in client.responses.create(model=MODELS[provider], input=f"respond stream {m}", stream=True):
        types.append(ev.type)
        if ev.type == "response.output_text.delta":
            deltas += ev.delta
        if ev.type == "response.completed":
            final = ev.response
    assert types[0] == "response.created" and types[-1] == "response.completed", types
    for t in ("response.output_item.added", "response.content_part.added", "response.output_text.done",
              "response.output_item.done"):
        assert t in types, types
    assert deltas == f"Mock upstream reply to: respond stream {m}"
    assert final.output_text == deltas
    assert final.usage.total_tokens > 0


@pytest.mark.parametrize("provider", PROVIDERS)
def test_responses_api_tool_call(client, natives, provider):
    m = marker()
    tool = {"type": "function", "name": "get_weather", "description": "weather",
            "parameters": WEATHER_TOOL["function"]["parameters"]}
    r = client.responses.create(model=MODELS[provider], input=f"weather in Paris {m}", tools=[tool])
    calls = [o for o in r.output if o.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Paris"}
    follow = [o.model_dump(exclude_none=True) for o in r.output] + [
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "rainy"}]
    r2 = client.responses.create(model=MODELS[provider], input=[{"role": "user", "content": f"weather {m}"}] + follow, tools=[tool])
    assert r2.output_text == "Tool said: rainy"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_streams_arrive_incrementally(client, provider):
    """Chunks reach the client while the (slow) upstream is still sending."""
    start = time.monotonic()
    arrivals = []
    for chunk in client.chat.completions.create(model=model_for(provider, "slow-stream"),
                                                messages=[{"role": "user", "content": "slow"}], stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - start)
    assert len(arrivals) >= 5, arrivals
    # The upstream spaces 6 chunks 0.4 s apart: the first must arrive long before the last.
    assert arrivals[-1] - arrivals[0] > 1.2, arrivals


@pytest.mark.parametrize("provider", PROVIDERS)
def test_rate_limit_keeps_retry_hint(client, gateway, upstream, provider):
    with pytest.raises(openai.RateLimitError) as exc:
        client.with_options(max_retries=0).chat.completions.create(
            model=model_for(provider, "fail-429"), messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 429
    body = support.error_json(exc.value)
    assert body["error"]["message"]
    retry = exc.value.response.headers.get("retry-after")
    assert retry is not None and int(retry) > 0, exc.value.response.headers
    support.assert_gateway_serves(gateway, upstream)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_upstream_server_error(client, gateway, upstream, provider):
    with pytest.raises(openai.APIStatusError) as exc:
        client.with_options(max_retries=0).chat.completions.create(
            model=model_for(provider, "fail-500"), messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code >= 500
    support.assert_error_shape(support.error_json(exc.value))
    support.assert_gateway_serves(gateway, upstream)


def test_anthropic_overloaded_is_503(client):
    with pytest.raises(openai.InternalServerError) as exc:
        client.with_options(max_retries=0).chat.completions.create(
            model="anthropic:fail-overloaded", messages=[{"role": "user", "content": "x"}])
    assert exc.value.status_code == 503
    assert support.error_json(exc.value)["error"]["code"] == "overloaded"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_broken_stream_ends_with_error(client, gateway, upstream, provider):
    text = ""
    with pytest.raises(openai.APIError):
        for chunk in client.chat.completions.create(model=model_for(provider, "break-stream"),
                                                    messages=[{"role": "user", "content": "x"}], stream=True):
            for c in chunk.choices:
                text += c.delta.content or ""
    assert text, "the chunks before the break should have reached the client"
    support.assert_gateway_serves(gateway, upstream)


def test_unmappable_field_is_400(client):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODELS["anthropic"], messages=[{"role": "user", "content": "x"}], n=3)
    assert support.error_json(exc.value)["error"]["param"] == "n"


def test_anthropic_sdk_pass_through(gateway, natives):
    """The `anthropic` SDK with the gateway as base URL and a virtual key as its API key."""
    m = marker()
    c = anthropic.Anthropic(base_url=gateway.base + "/v1/anthropic", api_key=support.KEY_ALL, max_retries=0,
                            timeout=support.TIMEOUT)
    msg = c.messages.create(model="claude-opus-4-6", max_tokens=64,
                            messages=[{"role": "user", "content": f"native {m}"}])
    assert msg.content[0].text == f"Mock upstream reply to: native {m}"
    rec = natives["anthropic"].find(m)
    assert rec.header("x-api-key") == "test-anthropic-key"
    assert rec.header("authorization") is None, "the caller's credential must not be forwarded"
    assert rec.header("anthropic-version"), "the client's anthropic-version must be forwarded"
    text = ""
    with c.messages.stream(model="claude-opus-4-6", max_tokens=64,
                           messages=[{"role": "user", "content": f"native stream {m}"}]) as s:
        for t in s.text_stream:
            text += t
    assert text == f"Mock upstream reply to: native stream {m}"


def provider_tokens(gw, provider: str) -> dict:
    _, samples = test_metrics.scrape(gw)
    out = {"prompt": 0.0, "completion": 0.0}
    for name, labels, v in samples:
        if name == "portcullis_tokens_total" and labels.get("provider") == provider and labels.get("kind") in out:
            out[labels["kind"]] += v
    return out


def assert_tokens_become(gw, provider: str, want: dict):
    deadline = time.monotonic() + 3
    while (got := provider_tokens(gw, provider)) != want and time.monotonic() < deadline:
        time.sleep(0.05)  # counters settle in the logging phase, after the response
    assert got == want


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_anthropic_pass_through_is_metered(gateway, stream):
    """Native pass-through answers count their tokens like translated ones (whole and streamed)."""
    m = marker()
    c = anthropic.Anthropic(base_url=gateway.base + "/v1/anthropic", api_key=support.KEY_ALL, max_retries=0,
                            timeout=support.TIMEOUT)
    before = provider_tokens(gateway, "anthropic")
    args = dict(model="claude-opus-4-6", max_tokens=64, messages=[{"role": "user", "content": f"metered {m}"}])
    if stream:
        with c.messages.stream(**args) as s:
            "".join(s.text_stream)
            usage = s.get_final_message().usage
    else:
        usage = c.messages.create(**args).usage
    prompt = usage.input_tokens + (usage.cache_read_input_tokens or 0) + (usage.cache_creation_input_tokens or 0)
    assert prompt > 0 and usage.output_tokens > 0
    want = {"prompt": before["prompt"] + prompt, "completion": before["completion"] + usage.output_tokens}
    assert_tokens_become(gateway, "anthropic", want)


@pytest.mark.parametrize("method", ["generateContent", "streamGenerateContent?alt=sse", "streamGenerateContent"])
def test_gemini_pass_through_is_metered(gateway, method):
    """Whole answers, SSE streams and the JSON-array stream all count their `usageMetadata`."""
    m = marker()
    before = provider_tokens(gateway, "gemini")
    r = httpx.post(
        gateway.base + f"/v1/gemini/v1beta/models/gemini-2.5-flash:{method}",
        headers={"x-goog-api-key": support.KEY_ALL},
        json={"contents": [{"role": "user", "parts": [{"text": f"gemini metered {m}"}]}]},
        timeout=support.TIMEOUT,
    )
    assert r.status_code == 200, r.text
    if "alt=sse" in method:
        chunks = [json.loads(line[len("data: "):]) for line in r.text.splitlines() if line.startswith("data: ")]
    else:
        chunks = r.json() if isinstance(r.json(), list) else [r.json()]
    meta = [c["usageMetadata"] for c in chunks if "usageMetadata" in c][-1]
    prompt = meta.get("promptTokenCount", 0) + meta.get("toolUsePromptTokenCount", 0)
    completion = meta.get("candidatesTokenCount", 0) + meta.get("thoughtsTokenCount", 0)
    assert prompt > 0 and completion > 0
    want = {"prompt": before["prompt"] + prompt, "completion": before["completion"] + completion}
    assert_tokens_become(gateway, "gemini", want)


def test_gemini_pass_through_with_goog_key(gateway, natives):
    m = marker()
    r = httpx.post(
        gateway.base + "/v1/gemini/v1beta/models/gemini-2.5-flash:generateContent",
        headers={"x-goog-api-key": support.KEY_ALL},
        json={"contents": [{"role": "user", "parts": [{"text": f"gemini native {m}"}]}]},
        timeout=support.TIMEOUT,
    )
    assert r.status_code == 200, r.text
    assert r.json()["candidates"][0]["content"]["parts"][0]["text"] == f"Mock upstream reply to: gemini native {m}"
    rec = natives["gemini"].find(m)
    assert rec.header("x-goog-api-key") == "test-gemini-key"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_anthropic_thinking_survives_tool_round_trip(client, natives, stream):
    """With thinking on, Anthropic rejects a tool round trip whose assistant turn lost its signed
    thinking block; the gateway hands it out as `thinking_blocks` and takes it back."""
    m = marker()
    messages = [{"role": "user", "content": f"weather in Paris? {m}"}]
    kw = dict(model=MODELS["anthropic"], tools=[WEATHER_TOOL], reasoning_effort="low")
    if stream:
        reasoning, blocks, calls = "", [], {}
        for chunk in client.chat.completions.create(messages=messages, stream=True, **kw):
            for c in chunk.choices:
                extra = c.delta.model_extra or {}
                reasoning += extra.get("reasoning_content") or ""
                blocks += extra.get("thinking_blocks") or []
                for tc in c.delta.tool_calls or []:
                    slot = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                    slot["id"] = tc.id or slot["id"]
                    slot["name"] = (tc.function and tc.function.name) or slot["name"]
                    slot["arguments"] += (tc.function and tc.function.arguments) or ""
        assert reasoning and blocks and blocks[0].get("signature"), (reasoning, blocks)
        call = calls[0]
        assistant = {"role": "assistant", "content": None, "reasoning_content": reasoning, "thinking_blocks": blocks,
                     "tool_calls": [{"id": call["id"], "type": "function",
                                     "function": {"name": call["name"], "arguments": call["arguments"]}}]}
    else:
        r = client.chat.completions.create(messages=messages, **kw)
        msg = r.choices[0].message
        assert (msg.model_extra or {}).get("reasoning_content"), msg
        assert (msg.model_extra or {}).get("thinking_blocks"), msg
        call = {"id": msg.tool_calls[0].id}
        assistant = msg.model_dump(exclude_none=True)
    messages += [assistant, {"role": "tool", "tool_call_id": call["id"], "content": "cloudy"}]
    r = client.chat.completions.create(messages=messages, **kw)
    assert r.choices[0].message.content == "Tool said: cloudy"
    # Without the thinking block the provider refuses, as the real API does.
    assistant.pop("thinking_blocks", None)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(messages=messages, **kw)


@pytest.mark.parametrize("method", ["converse", "converse-stream"])
def test_bedrock_pass_through_is_metered(gateway, natives, method):
    """ConverseStream's binary event-stream is relayed frame for frame as it arrives (not buffered)
    and metered from its `metadata` event; Converse from its body."""
    import mock_bedrock
    from urllib.parse import quote

    m = marker()
    before = provider_tokens(gateway, "bedrock")
    model = quote("us.anthropic.claude-sonnet-4-20250514-v1:0", safe="")
    r = httpx.post(
        gateway.base + f"/v1/bedrock/model/{model}/{method}",
        headers={"authorization": f"Bearer {support.KEY_ALL}"},
        json={"messages": [{"role": "user", "content": [{"text": f"bedrock metered {m}"}]}]},
        timeout=support.TIMEOUT,
    )
    assert r.status_code == 200, r.text[:300]
    if method == "converse-stream":
        assert r.headers["content-type"].startswith("application/vnd.amazon.eventstream")
        frames = mock_bedrock.decode_frames(r.content)
        text = "".join(json.loads(p)["delta"].get("text", "") for h, p in frames
                       if h.get(":event-type") == "contentBlockDelta")
        assert text == f"Mock upstream reply to: bedrock metered {m}"
        usage = [json.loads(p)["usage"] for h, p in frames if h.get(":event-type") == "metadata"][-1]
    else:
        usage = r.json()["usage"]
    prompt = usage["inputTokens"] + usage.get("cacheReadInputTokens", 0) + usage.get("cacheWriteInputTokens", 0)
    want = {"prompt": before["prompt"] + prompt, "completion": before["completion"] + usage["outputTokens"]}
    assert_tokens_become(gateway, "bedrock", want)



def test_bedrock_pass_through_stream_arrives_incrementally(gateway):
    """Binary ConverseStream frames reach the client while the slow upstream is still sending."""
    start = time.monotonic()
    arrivals = []
    with httpx.stream(
        "POST", gateway.base + "/v1/bedrock/model/slow-stream/converse-stream",
        headers={"authorization": f"Bearer {support.KEY_ALL}"},
        json={"messages": [{"role": "user", "content": [{"text": "slow"}]}]},
        timeout=support.TIMEOUT,
    ) as r:
        assert r.status_code == 200
        for _ in r.iter_raw():
            arrivals.append(time.monotonic() - start)
    assert len(arrivals) >= 5, arrivals
    assert arrivals[-1] - arrivals[0] > 1.2, arrivals
