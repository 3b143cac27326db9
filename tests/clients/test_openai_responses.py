"""The Responses API (`POST /v1/responses`) served natively by an `openai` provider, end to end.

For `openai:` models the gateway forwards the caller's Responses request to the upstream's
`/responses` (only `model` rewritten, the gateway's key injected) and relays the answer as sent:
the whole body, or the named-event stream (`event: response.created` ... `response.completed`).
It meters the usage it reads on the way. The mock OpenAI upstream answers `/responses` in the
recorded envelopes of `fixtures/openai/responses-*` with the recorded usage numbers
(`RESPONSES_USAGE` whole, `RESPONSES_STREAM_USAGE` streamed), which these tests check against
what the SDK parses, the access log and `GET /v1/usage` (on a dedicated gateway with fresh
per-key counters, so the numbers are exact).

The first tests drive the mock with the SDK directly (no gateway): if they fail, the mock is wrong.
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

import support
from mock_openai import RESPONSES_STREAM_USAGE, RESPONSES_USAGE, reply_text, tool_result_reply
from support import KEY_ALL, OPENAI_UPSTREAM_KEY, marker

MODEL = "openai:gpt-4o-mini"
PRICE_IN, PRICE_OUT = 10.0, 20.0  # USD per million tokens of openai:gpt-4o-mini in both configs
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
# The recorded text stream's events before and after its `response.output_text.delta`s.
TEXT_EVENTS_HEAD = ["response.created", "response.in_progress", "response.output_item.added",
                    "response.content_part.added"]
TEXT_EVENTS_TAIL = ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                    "response.completed"]


def cost(u: dict) -> float:
    return (u["input_tokens"] * PRICE_IN + u["output_tokens"] * PRICE_OUT) / 1e6


def assert_usage(got, want: dict):
    """An SDK `ResponseUsage` equals the mock's recorded numbers."""
    assert got is not None, "no usage in the response"
    assert (got.input_tokens, got.output_tokens, got.total_tokens) == (
        want["input_tokens"], want["output_tokens"], want["total_tokens"]), got
    assert got.input_tokens_details.cached_tokens == want["input_tokens_details"]["cached_tokens"], got
    assert got.output_tokens_details.reasoning_tokens == want["output_tokens_details"]["reasoning_tokens"], got


def assert_text_events(types: list):
    """The recorded text stream's event order, one or more deltas in the middle."""
    n = len(TEXT_EVENTS_HEAD)
    assert types[:n] == TEXT_EVENTS_HEAD and types[-n:] == TEXT_EVENTS_TAIL, types
    middle = types[n:-n]
    assert middle and set(middle) == {"response.output_text.delta"}, types


def upstream_auth(rec) -> None:
    """The upstream got the gateway's provider key, and nothing of the caller's virtual key."""
    assert rec.header_all("authorization") == [f"Bearer {OPENAI_UPSTREAM_KEY}"], rec.summary()
    assert not any(KEY_ALL in v for _, v in rec.headers), rec.summary()


def access_row(gw, rid: str) -> dict:
    """The access-log line of request `rid` (written when the request ends, just after the client
    has read the last byte)."""
    rows = []
    for _ in range(60):
        for line in gw.log_text().splitlines():
            if rid in line and "{" in line:
                try:
                    row = json.loads(line[line.index("{"):])
                except ValueError:
                    continue
                if row.get("request_id") == rid and "route" in row:
                    rows.append(row)
        if rows:
            break
        time.sleep(0.05)
    assert len(rows) == 1, f"access log rows for {rid}: {rows}"
    return rows[0]


def assert_metered(row: dict, want: dict):
    """The access log's usage and cost are the upstream's numbers."""
    assert row["usage"] is not None, f"the gateway metered no usage for this answer: {row}"
    u = row["usage"]
    assert (u["prompt_tokens"], u["completion_tokens"]) == (want["input_tokens"], want["output_tokens"]), row
    assert u["cached_tokens"] == want["input_tokens_details"]["cached_tokens"], row
    assert u["reasoning_tokens"] == want["output_tokens_details"]["reasoning_tokens"], row
    assert row["cost_usd"] == pytest.approx(cost(want), rel=1e-6), row


# -- the mock itself ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def direct(upstream):
    return support.sdk(f"http://127.0.0.1:{upstream.port}/v1", api_key="sk-direct")


def test_mock_responses_text_and_stream(direct, upstream):
    r = direct.responses.create(model="gpt-4o-mini", input="hi")
    assert r.output_text == reply_text("hi") and r.model == "gpt-4o-mini" and r.status == "completed"
    assert_usage(r.usage, RESPONSES_USAGE)
    parts = [{"role": "user", "content": [{"type": "input_text", "text": "in parts"}]}]
    assert direct.responses.create(model="gpt-4o-mini", input=parts).output_text == reply_text("in parts")
    ids = set()
    for model in ("gpt-4o-mini", "split-stream"):
        events = list(direct.responses.create(model=model, input="hi", stream=True))
        assert_text_events([e.type for e in events])
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == reply_text("hi")
        final = events[-1].response
        assert final.output_text == reply_text("hi") and final.model == model
        assert_usage(final.usage, RESPONSES_STREAM_USAGE)
        ids.add(final.id)
    assert len(ids) == 2, "response ids must be unique"
    raw = httpx.post(f"http://127.0.0.1:{upstream.port}/v1/responses", json={"model": "m", "input": "x", "stream": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.startswith('event: response.created\ndata: {"type":"response.created","sequence_number":0,')
    assert raw.text.endswith("}\n\n") and "[DONE]" not in raw.text


def test_mock_responses_tools_and_errors(direct):
    r = direct.responses.create(model="gpt-4o-mini", input="weather", tools=[TOOL])
    (call,) = r.output
    assert call.type == "function_call" and call.name == "get_weather" and json.loads(call.arguments)
    events = list(direct.responses.create(model="gpt-4o-mini", input="weather", tools=[TOOL], stream=True))
    assert events[-1].response.output[0].name == "get_weather"
    follow = [{"role": "user", "content": "weather"}, call.model_dump(exclude_none=True),
              {"type": "function_call_output", "call_id": call.call_id, "output": "rainy"}]
    assert direct.responses.create(model="gpt-4o-mini", input=follow, tools=[TOOL]).output_text == tool_result_reply("rainy")
    for stream in (False, True):
        with pytest.raises(openai.RateLimitError) as e:
            direct.responses.create(model="fail-429", input="x", stream=stream)
        assert e.value.response.headers["retry-after"] == "7" and e.value.code == "insufficient_quota"
    with pytest.raises(openai.APIError) as e:
        list(direct.responses.create(model="quota-stream", input="x", stream=True))
    assert e.value.code == "insufficient_quota"


# -- through the gateway -----------------------------------------------------------------------


def test_responses_native_whole(client, gateway, upstream):
    m = marker()
    raw = client.responses.with_raw_response.create(model=MODEL, instructions="Be brief.", input=f"native {m}")
    r = raw.parse()
    assert r.object == "response" and r.status == "completed"
    assert r.output_text == reply_text(f"native {m}")
    assert r.id.startswith("resp_mock"), "the upstream's own answer, not a translation"
    assert r.model == "gpt-4o-mini"
    assert_usage(r.usage, RESPONSES_USAGE)
    assert raw.headers.get("x-portcullis-provider") == "openai"
    rec = upstream.find(m)
    assert rec.method == "POST" and rec.path == "/v1/responses", rec.summary()
    body = rec.json()
    assert body["model"] == "gpt-4o-mini", "the `openai:` prefix must be stripped"
    assert body["instructions"] == "Be brief." and body["input"] == f"native {m}"
    assert "messages" not in body, "forwarded natively, not translated to Chat Completions"
    upstream_auth(rec)
    assert_metered(access_row(gateway, raw.headers["x-request-id"]), RESPONSES_USAGE)


def test_responses_native_body_is_forwarded_with_only_the_model_rewritten(http, upstream):
    m = marker()
    sent = {
        "model": MODEL,
        "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"exact {m} ünïcode"}]}],
        "temperature": 0.25,
        "store": False,
        "metadata": {"trace": m},
        "include": ["reasoning.encrypted_content"],
        "max_output_tokens": 77,
    }
    r = http.post("/v1/responses", json=sent, headers=support.auth())
    assert r.status_code == 200, r.text
    assert r.json()["output"][0]["content"][0]["text"] == reply_text(f"exact {m} ünïcode")
    rec = upstream.find(m)
    assert rec.json() == {**sent, "model": "gpt-4o-mini"}
    assert rec.header("accept") == "application/json"
    upstream_auth(rec)


def test_responses_native_stream(client, upstream):
    m = marker()
    raw = client.responses.with_raw_response.create(model=MODEL, input=f"stream {m}", stream=True)
    events = list(raw.parse())
    types = [e.type for e in events]
    assert_text_events(types)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == reply_text(f"stream {m}")
    final = events[-1].response
    assert final.status == "completed" and final.output_text == reply_text(f"stream {m}")
    assert final.model == "gpt-4o-mini" and final.id == events[0].response.id
    assert_usage(final.usage, RESPONSES_STREAM_USAGE)
    rec = upstream.find(m)
    assert rec.path == "/v1/responses" and rec.json()["model"] == "gpt-4o-mini" and rec.json()["stream"] is True
    assert rec.header("accept") == "text/event-stream"
    upstream_auth(rec)


def test_responses_native_stream_is_metered(client, gateway):
    """The usage of a streamed answer is in its `response.completed` event (`response.usage`)."""
    raw = client.responses.with_raw_response.create(model=MODEL, input=f"metered stream {marker()}", stream=True)
    assert_usage(list(raw.parse())[-1].response.usage, RESPONSES_STREAM_USAGE)
    row = access_row(gateway, raw.headers["x-request-id"])
    assert row["status"] == 200 and row["provider"] == "openai" and row["model"] == "gpt-4o-mini", row
    assert_metered(row, RESPONSES_STREAM_USAGE)


def test_responses_native_stream_helper(client, upstream):
    """`client.responses.stream(...)`: the SDK's accumulating helper, with list input in parts."""
    m = marker()
    seen = []
    with client.responses.stream(
        model=MODEL, input=[{"role": "user", "content": [{"type": "input_text", "text": f"helper {m}"}]}]
    ) as s:
        for ev in s:
            seen.append(ev.type)
        final = s.get_final_response()
    assert_text_events(seen)
    assert final.output_text == reply_text(f"helper {m}")
    assert_usage(final.usage, RESPONSES_STREAM_USAGE)
    assert upstream.find(m).json()["model"] == "gpt-4o-mini"


def test_responses_native_stream_framing(http, upstream):
    """On the wire: the upstream's named events, re-framed one by one, nothing added (no `[DONE]`,
    no chat chunks), the SSE content type."""
    m = marker()
    with http.stream("POST", "/v1/responses", headers=support.auth(),
                     json={"model": MODEL, "input": f"framing {m}", "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream"), r.headers
        body = r.read().decode()
    assert body.endswith("\n\n") and "[DONE]" not in body
    blocks = body.split("\n\n")[:-1]
    for n, block in enumerate(blocks):
        lines = block.split("\n")
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        data = json.loads(lines[1][len("data: "):])
        assert data["type"] == lines[0][len("event: "):] and data["sequence_number"] == n, block
    assert_text_events([b.split("\n")[0][len("event: "):] for b in blocks])
    upstream.find(m)


def test_responses_native_split_stream(client):
    """An upstream stream arriving in 5-byte pieces (events and UTF-8 split across reads)."""
    events = list(client.responses.create(model="openai:split-stream", input="split ✓ é", stream=True))
    assert_text_events([e.type for e in events])
    assert events[-1].response.output_text == reply_text("split ✓ é")


def test_responses_native_tool_round_trip(client, upstream):
    m = marker()
    r = client.responses.create(model=MODEL, input=f"weather in Paris {m}", tools=[TOOL])
    (call,) = [o for o in r.output if o.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments)
    assert upstream.find(m).json()["tools"] == [TOOL]
    events = list(client.responses.create(model=MODEL, input=f"weather again {m}", tools=[TOOL], stream=True))
    assert [e.type for e in events if "function_call_arguments" in e.type][-1] == "response.function_call_arguments.done"
    assert events[-1].response.output[0].name == "get_weather"
    follow = [{"role": "user", "content": f"weather {m}"}, call.model_dump(exclude_none=True),
              {"type": "function_call_output", "call_id": call.call_id, "output": "rainy"}]
    assert client.responses.create(model=MODEL, input=follow, tools=[TOOL]).output_text == tool_result_reply("rainy")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_responses_native_upstream_429(client, upstream, stream):
    m = marker()
    with pytest.raises(openai.RateLimitError) as e:
        r = client.responses.create(model="openai:fail-429", input=f"quota {m}", stream=stream)
        list(r) if stream else None
    assert e.value.status_code == 429
    assert e.value.response.headers.get("retry-after") == "7", dict(e.value.response.headers)
    err = support.assert_error_shape(support.error_json(e.value))
    assert (err["type"], err["code"]) == ("insufficient_quota", "insufficient_quota"), err
    assert upstream.find(m).path == "/v1/responses"


def test_responses_native_upstream_500_and_rejected_key(client):
    with pytest.raises(openai.InternalServerError) as e:
        client.responses.create(model="openai:fail-500", input="boom")
    support.assert_error_shape(support.error_json(e.value))
    # OpenAI's 401 quotes the gateway's own key: a 502 that does not.
    with pytest.raises(openai.InternalServerError) as e:
        client.responses.create(model="openai:fail-401", input="whose key")
    assert e.value.status_code == 502
    err = support.assert_error_shape(support.error_json(e.value))
    assert err["code"] == "upstream_auth_failed" and "sk-" not in err["message"], err


def test_responses_native_in_stream_error(client, gateway, upstream):
    """A stream that starts 200 and fails in-band (OpenAI's `error` + `response.failed`): the SDK
    raises from the `error` event; a stream cut mid-body also surfaces as an error."""
    with pytest.raises(openai.APIError) as e:
        list(client.responses.create(model="openai:quota-stream", input="quota in stream", stream=True))
    assert e.value.code == "insufficient_quota", e.value.body
    with pytest.raises((openai.APIError, httpx.TransportError)):
        events = list(client.responses.create(model="openai:break-stream", input="cut", stream=True))
        assert events[-1].type == "response.completed", [ev.type for ev in events]
    support.assert_gateway_serves(gateway, upstream)


@pytest.mark.parametrize("proxy", ["default", "team-a"])
def test_responses_native_model_router(gateway, upstream, proxy):
    c = support.sdk(gateway.base + f"/v1/model-router/{proxy}")
    m = marker()
    r = c.responses.create(model=MODEL, input=f"router {m}")
    assert r.output_text == reply_text(f"router {m}") and r.id.startswith("resp_mock")
    assert_usage(r.usage, RESPONSES_USAGE)
    rec = upstream.find(m)
    assert rec.path == "/v1/responses" and rec.json()["model"] == "gpt-4o-mini"
    upstream_auth(rec)
    events = list(c.responses.create(model=MODEL, input=f"router stream {m}", stream=True))
    assert_text_events([e.type for e in events])
    assert events[-1].response.output_text == reply_text(f"router stream {m}")
    assert upstream.find(f"router stream {m}").path == "/v1/responses"


# -- metering: `GET /v1/usage` on a gateway of its own (fresh counters) ------------------------

KEY_METERED_WHOLE = "pc-test-responses-whole"
KEY_METERED_STREAM = "pc-test-responses-stream"
BUDGET = 5.0


def render_config(upstream_port: int):
    def render(port: int, admin_port: int, workdir) -> str:
        keys = "".join(f"""
[[auth.virtual_keys]]
name = "{name}"
key_sha256 = "{support.sha256_hex(key)}"
providers = ["openai"]
limits = [{{ window = "month", cost_usd = {BUDGET} }}]
""" for name, key in (("responses-whole", KEY_METERED_WHOLE), ("responses-stream", KEY_METERED_STREAM)))
        return f"""# Written by tests/clients/test_openai_responses.py.
{support.server_section(port, admin_port, workdir)}
[egress]
allow_hosts = ["127.0.0.1"]

[providers.openai]
kind = "openai"
base_url = "http://127.0.0.1:{upstream_port}/v1"
api_key = "{OPENAI_UPSTREAM_KEY}"
models = ["gpt-4o-mini"]

[pricing]
"openai:gpt-4o-mini" = {{ input = {PRICE_IN}, output = {PRICE_OUT} }}
{keys}"""

    return render


@pytest.fixture(scope="module")
def metered_gw(upstream, workdir):
    import conftest

    with conftest.dedicated_gateway("responses-metered", workdir / "responses-metered", render_config(upstream.port)) as g:
        yield g


def assert_usage_report(gw, key: str, principal: str, want: dict):
    """`GET /v1/usage` of a key that made one request: the upstream's tokens, their cost, and the
    budget charged that cost (not the gateway's estimate)."""
    deadline = time.time() + 3.0
    while True:  # settled in the gateway's logging phase, just after the client read the last byte
        body = httpx.get(gw.base + "/v1/usage", headers=support.auth(key)).json()
        day = body["usage"]["last24h"]
        if (day["requestCount"] == 1 and day["inputTokens"] == want["input_tokens"]) or time.time() > deadline:
            break
        time.sleep(0.1)
    assert body["principal"] == principal, body
    assert day["requestCount"] == 1, body
    assert (day["inputTokens"], day["outputTokens"]) == (want["input_tokens"], want["output_tokens"]), (
        f"the upstream reported {want}: {body}")
    assert day["costUsd"] == pytest.approx(cost(want), rel=1e-6), body
    (budget,) = body["budgets"]
    assert budget["remainingCostUsd"] == pytest.approx(BUDGET - cost(want), rel=1e-6), body


def test_responses_native_usage_is_metered(metered_gw):
    c = support.sdk(metered_gw.base + "/v1", api_key=KEY_METERED_WHOLE)
    assert_usage(c.responses.create(model=MODEL, input="count me").usage, RESPONSES_USAGE)
    assert_usage_report(metered_gw, KEY_METERED_WHOLE, "responses-whole", RESPONSES_USAGE)


def test_responses_native_stream_usage_is_metered(metered_gw):
    c = support.sdk(metered_gw.base + "/v1", api_key=KEY_METERED_STREAM)
    events = list(c.responses.create(model=MODEL, input="count me too", stream=True))
    assert_usage(events[-1].response.usage, RESPONSES_STREAM_USAGE)
    assert_usage_report(metered_gw, KEY_METERED_STREAM, "responses-stream", RESPONSES_STREAM_USAGE)
