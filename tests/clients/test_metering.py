"""Budgets, rate limits and `/v1/usage` through the gateway binary with the official OpenAI SDK.

Each test uses its own virtual key (see conftest.py), so counters never mix between tests. Prices
in the test config: `openai:gpt-4o-mini` $10 / $20 per million input / output tokens.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest

import support
from support import KEY_BUDGET, KEY_RATE_LIMITED, KEY_TEAM_A, KEY_TEAM_B, KEY_TOKEN_LIMITED, KEY_USAGE

MODEL = "openai:gpt-4o-mini"
PRICE_IN, PRICE_OUT = 10.0, 20.0  # USD per million tokens


def sdk(gateway, key):
    # support.sdk turns SDK retries off: a 429 must reach the test.
    return support.sdk(gateway.base + "/v1", api_key=key)


def chat(client, text="hello", **kw):
    return client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": text}], **kw)


def usage_of(gateway, key, settled=lambda body: True):
    """`GET /v1/usage`, polled briefly: a request is settled in the gateway's logging phase, just
    after the client has read the last byte."""
    deadline = time.time() + 3.0
    while True:
        body = httpx.get(gateway.base + "/v1/usage", headers=support.auth(key)).json()
        if settled(body) or time.time() > deadline:
            return body
        time.sleep(0.05)


def wait_for_fresh_minute(margin: float = 8.0):
    """Minute windows are aligned to the clock: start a test early in one, so it cannot roll over
    between the requests that fill it and the one that must be refused."""
    left = 60.0 - (time.time() % 60.0)
    if left < margin:
        time.sleep(left + 0.2)


def test_request_rate_limit_answers_429_with_openai_headers(gateway):
    client = sdk(gateway, KEY_RATE_LIMITED)
    wait_for_fresh_minute()
    remaining = []
    for _ in range(3):
        raw = chat(client)
        assert raw.http_response.status_code == 200
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        remaining.append(raw.headers["x-ratelimit-remaining-requests"])
        assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
    assert remaining == ["2", "1", "0"]
    with pytest.raises(openai.RateLimitError) as e:
        chat(client)
    err = support.error_json(e.value)["error"]
    assert err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
    assert "3 requests per minute" in err["message"] and "test-rate-limited" in err["message"]
    h = e.value.response.headers
    assert 1 <= int(h["retry-after"]) <= 60
    assert h["x-ratelimit-remaining-requests"] == "0"
    # Streams are metered the same way.
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True)


def test_token_limit_refuses_a_request_whose_estimate_does_not_fit(gateway):
    client = sdk(gateway, KEY_TOKEN_LIMITED)
    wait_for_fresh_minute()
    with pytest.raises(openai.RateLimitError) as e:
        chat(client, max_tokens=1000)
    err = support.error_json(e.value)["error"]
    assert err["type"] == "tokens" and "300 tokens per minute" in err["message"]
    # A small request fits; its reservation is replaced by the real count once it ends.
    raw = chat(client, max_tokens=20)
    assert raw.http_response.status_code == 200
    assert raw.headers["x-ratelimit-limit-tokens"] == "300"
    used = raw.parse().usage.total_tokens
    usage = usage_of(gateway, KEY_TOKEN_LIMITED, lambda b: b["rateLimits"][0]["tokens"] == used)
    (limit,) = usage["rateLimits"]
    assert limit["maxTokens"] == 300 and limit["window"] == "minute"
    assert limit["tokens"] == used, usage


def test_budget_stops_spending_and_says_so(gateway):
    client = sdk(gateway, KEY_BUDGET)
    spent = 0.0
    ok = 0
    for _ in range(40):
        try:
            raw = chat(client, "spend", max_tokens=5)
        except openai.RateLimitError as e:
            err = support.error_json(e)["error"]
            assert err["code"] == "budget_exceeded" and err["type"] == "insufficient_quota"
            assert "$0.0300 per day" in err["message"]
            assert e.response.headers["x-should-retry"] == "false"
            assert int(e.response.headers["retry-after"]) > 60
            break
        u = raw.parse().usage
        spent += (u.prompt_tokens * PRICE_IN + u.completion_tokens * PRICE_OUT) / 1e6
        ok += 1
    else:
        pytest.fail("the $0.03 budget never ran out")
    assert ok >= 2, "several requests fit the budget"
    assert spent > 0.03 - 0.0075, "the budget was nearly spent before it refused"
    usage = usage_of(gateway, KEY_BUDGET, lambda b: b["usage"]["last24h"]["requestCount"] == ok)
    (budget,) = usage["budgets"]
    assert budget["window"] == "day" and budget["maxCostUsd"] == 0.03
    assert budget["spentCostUsd"] == pytest.approx(spent, rel=1e-6)
    assert usage["usage"]["last24h"]["requestCount"] == ok
    assert usage["usage"]["last24h"]["costUsd"] == pytest.approx(spent, rel=1e-6)


def test_group_limit_is_shared_by_its_members(gateway):
    a, b = sdk(gateway, KEY_TEAM_A), sdk(gateway, KEY_TEAM_B)
    wait_for_fresh_minute()
    chat(a)
    chat(b)
    chat(a)
    with pytest.raises(openai.RateLimitError) as e:
        chat(b)
    assert "group `metered-team`" in support.error_json(e.value)["error"]["message"]


def test_usage_reports_the_callers_own_usage_streams_included(gateway):
    client = sdk(gateway, KEY_USAGE)
    whole = chat(client, "count me").parse().usage
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "count me too"}], stream=True,
        stream_options={"include_usage": True})
    streamed = [c.usage for c in stream if c.usage][-1]
    body = usage_of(gateway, KEY_USAGE, lambda b: b["usage"]["last24h"]["requestCount"] == 2)
    assert body["principal"] == "test-usage"
    day = body["usage"]["last24h"]
    assert day["requestCount"] == 2
    assert day["inputTokens"] == whole.prompt_tokens + streamed.prompt_tokens
    assert day["outputTokens"] == whole.completion_tokens + streamed.completion_tokens
    cost = ((whole.prompt_tokens + streamed.prompt_tokens) * PRICE_IN
            + (whole.completion_tokens + streamed.completion_tokens) * PRICE_OUT) / 1e6
    assert day["costUsd"] == pytest.approx(cost, rel=1e-6)
    (budget,) = body["budgets"]
    assert budget["window"] == "month" and budget["scope"] == "key" and budget["id"] == "test-usage"
    assert budget["remainingCostUsd"] == pytest.approx(5.0 - cost, rel=1e-6)
    assert 0 < budget["resetsInSeconds"] <= 31 * 86400
    # Another caller sees only its own numbers.
    other = httpx.get(gateway.base + "/v1/usage", headers=support.auth(support.KEY_MOCKONLY)).json()
    assert other["principal"] == "test-mockonly" and other["budgets"] == []
    # And no credentials, no report.
    r = httpx.get(gateway.base + "/v1/usage")
    support.assert_error_shape(r.json(), 401)
