"""Every failure the contract names: status, OpenAI error shape, the SDK exception class —
and after each one the gateway still serves a normal request."""

import json

import httpx
import openai
import pytest

import support
from support import (
    CALLER_OWN_OPENAI_KEY,
    KEY_MOCKONLY,
    MAX_BODY_BYTES,
    assert_error_shape,
    assert_gateway_serves,
    error_json,
    marker,
)

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(autouse=True)
def still_serving(gateway, upstream):
    """Runs each error test, then proves the gateway is still healthy."""
    yield
    assert_gateway_serves(gateway, upstream)


def _sdk_error(exc_type, fn):
    with pytest.raises(exc_type) as info:
        fn()
    return info.value


# -- authentication --------------------------------------------------------------------------


def test_no_authorization_header(http):
    body = json.dumps({"model": "mock:echo", "messages": HELLO})
    r = http.post(CHAT, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 401, r.text
    assert r.headers.get("www-authenticate", "").startswith('Bearer error="invalid_token"'), r.headers
    assert_error_shape(r.json())


def test_no_authorization_sdk(gateway, upstream):
    c = support.sdk(gateway.base + "/v1")
    m = marker()
    e = _sdk_error(
        openai.AuthenticationError,
        lambda: c.chat.completions.create(
            model="openai:gpt-4o-mini",
            messages=[{"role": "user", "content": m}],
            extra_headers={"Authorization": openai.omit},
        ),
    )
    assert "authorization" not in {k.lower() for k in e.request.headers}, "the SDK still sent a key"
    assert e.response.headers.get("www-authenticate", "").startswith('Bearer error="invalid_token"')
    assert_error_shape(error_json(e))
    assert not upstream.matching(m)


def test_empty_bearer_and_non_bearer(http):
    for value in ("Bearer", "Bearer x y", "Basic dXNlcjpwYXNz", "pc-test-all"):
        r = http.post(CHAT, content=json.dumps({"model": "mock:echo", "messages": HELLO}), headers={"authorization": value})
        assert r.status_code == 401, (value, r.status_code, r.text)
        assert_error_shape(r.json())


def test_wrong_virtual_key(gateway):
    c = support.sdk(gateway.base + "/v1", api_key="pc-wrong")
    e = _sdk_error(openai.AuthenticationError, lambda: c.chat.completions.create(model="mock:echo", messages=HELLO))
    assert e.status_code == 401
    assert e.response.headers.get("www-authenticate", "").startswith('Bearer error="invalid_token"')
    assert_error_shape(error_json(e))


def test_wrong_key_streaming(gateway):
    """Auth fails before the stream starts: a JSON 401, not an SSE body."""
    c = support.sdk(gateway.base + "/v1", api_key="pc-wrong")
    e = _sdk_error(openai.AuthenticationError, lambda: c.chat.completions.create(model="mock:echo", messages=HELLO, stream=True))
    assert_error_shape(error_json(e))


def test_provider_key_outside_passthrough_route(gateway, upstream):
    """A provider's own key is accepted only on /v1/{provider}/...; the router wants gateway credentials."""
    c = support.sdk(gateway.base + "/v1", api_key=CALLER_OWN_OPENAI_KEY)
    m = marker()
    e = _sdk_error(
        openai.AuthenticationError,
        lambda: c.chat.completions.create(model="openai:gpt-4o-mini", messages=[{"role": "user", "content": m}]),
    )
    assert_error_shape(error_json(e))
    assert not upstream.matching(m), "a rejected request reached the upstream"


# -- request validation ----------------------------------------------------------------------


def test_invalid_json(http, upstream):
    m = marker()
    r = http.post(CHAT, headers=support.auth(), content=b'{"model": "openai:gpt-4o-mini", "messages": [' + m.encode())
    assert r.status_code == 400, r.text
    assert_error_shape(r.json(), code="invalid_json")
    assert not upstream.matching(m)


def test_wrong_field_type(client):
    e = _sdk_error(
        openai.BadRequestError,
        lambda: client.chat.completions.create(model="openai:gpt-4o-mini", messages=HELLO, extra_body={"stream": "yes"}),
    )
    assert e.status_code == 400
    assert_error_shape(error_json(e), param="stream")


def test_messages_missing(client):
    e = _sdk_error(openai.BadRequestError, lambda: client.post("/chat/completions", body={"model": "openai:gpt-4o-mini"}, cast_to=object))
    assert e.status_code == 400
    assert_error_shape(error_json(e), param="messages")
    assert e.param == "messages"


def test_body_over_limit(gateway):
    c = support.sdk(gateway.base + "/v1")
    big = "x" * (MAX_BODY_BYTES + 1024)
    try:
        c.chat.completions.create(model="openai:gpt-4o-mini", messages=[{"role": "user", "content": big}])
    except openai.APIStatusError as exc:
        e = exc
    except openai.APIConnectionError as exc:
        pytest.fail(f"the gateway dropped the connection instead of answering 413: {exc.__cause__!r}")
    else:
        pytest.fail("a body over server.max_body_bytes was accepted")
    assert e.status_code == 413, e
    assert_error_shape(error_json(e))


def test_body_over_limit_chunked(http):
    """No content-length to check up front: the limit still holds while reading."""

    def gen():
        yield b'{"model":"openai:gpt-4o-mini","messages":[{"role":"user","content":"'
        for _ in range(9):
            yield b"y" * (1024 * 1024)
        yield b'"}]}'

    try:
        r = http.post(CHAT, headers=support.auth(), content=gen())
    except httpx.TransportError as e:  # the gateway may close after answering; then we never see it
        pytest.fail(f"the gateway dropped the connection instead of answering 413: {e!r}")
    assert r.status_code == 413, r.text[:300]
    assert_error_shape(r.json())


# -- model resolution and access -------------------------------------------------------------


def test_unknown_provider_prefix(client):
    e = _sdk_error(openai.BadRequestError, lambda: client.chat.completions.create(model="nope:x", messages=HELLO))
    err = assert_error_shape(error_json(e), code="model_not_found")
    for p in ("openai", "groq", "mock", "azure"):
        assert p in err["message"], f"message should list configured providers: {err['message']!r}"
    assert e.code == "model_not_found"


def test_unknown_bare_model(client):
    e = _sdk_error(openai.BadRequestError, lambda: client.chat.completions.create(model="gpt-9", messages=HELLO))
    err = assert_error_shape(error_json(e), code="model_not_found")
    assert "provider:model" in err["message"], err["message"]


def test_key_without_provider(mockonly_client, upstream):
    m = marker()
    e = _sdk_error(
        openai.PermissionDeniedError,
        lambda: mockonly_client.chat.completions.create(model="openai:gpt-4o-mini", messages=[{"role": "user", "content": m}]),
    )
    assert e.status_code == 403
    assert_error_shape(error_json(e))
    assert not upstream.matching(m)


def test_key_without_provider_passthrough(gateway, upstream):
    c = support.sdk(gateway.base + "/v1/openai", api_key=KEY_MOCKONLY)
    m = marker()
    e = _sdk_error(
        openai.PermissionDeniedError,
        lambda: c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": m}]),
    )
    assert_error_shape(error_json(e))
    assert not upstream.matching(m)


def test_key_not_allowed_on_proxy(gateway):
    c = support.sdk(gateway.base + "/v1/model-router/team-a", api_key=KEY_MOCKONLY)
    e = _sdk_error(openai.PermissionDeniedError, lambda: c.chat.completions.create(model="mock:echo", messages=HELLO))
    assert_error_shape(error_json(e))
    e = _sdk_error(openai.PermissionDeniedError, lambda: c.models.list())
    assert_error_shape(error_json(e))


def test_unknown_proxy(gateway):
    c = support.sdk(gateway.base + "/v1/model-router/no-such-proxy")
    e = _sdk_error(openai.NotFoundError, lambda: c.chat.completions.create(model="mock:echo", messages=HELLO))
    assert e.status_code == 404
    assert_error_shape(error_json(e))


def test_proxy_disallows_provider(gateway, upstream):
    c = support.sdk(gateway.base + "/v1/model-router/team-a")
    m = marker()
    e = _sdk_error(
        openai.PermissionDeniedError,
        lambda: c.chat.completions.create(model="groq:llama-3.1-8b-instant", messages=[{"role": "user", "content": m}]),
    )
    assert_error_shape(error_json(e))
    assert not upstream.matching(m)


def test_unknown_route(http):
    r = http.get("/v1/definitely-not-a-route/x", headers=support.auth())
    assert r.status_code in (400, 404), r.text
    assert_error_shape(r.json())


# -- upstream failures -----------------------------------------------------------------------


def test_upstream_500(client):
    e = _sdk_error(openai.InternalServerError, lambda: client.chat.completions.create(model="openai:fail-500", messages=HELLO))
    assert 500 <= e.status_code < 600
    assert_error_shape(error_json(e))


def test_upstream_500_streaming(client):
    e = _sdk_error(
        openai.InternalServerError,
        lambda: client.chat.completions.create(model="openai:fail-500", messages=HELLO, stream=True),
    )
    assert_error_shape(error_json(e))


def test_upstream_rejecting_the_gateway_key_is_502_without_the_key(client):
    # OpenAI's 401 quotes the key it got: the gateway's own, never to be shown to a caller.
    e = _sdk_error(openai.InternalServerError, lambda: client.chat.completions.create(model="openai:fail-401", messages=HELLO))
    assert e.status_code == 502
    err = assert_error_shape(error_json(e))
    assert err["code"] == "upstream_auth_failed", err
    assert "sk-" not in err["message"] and "test" not in err["message"], err


def test_upstream_429_passes_through(client):
    e = _sdk_error(openai.RateLimitError, lambda: client.chat.completions.create(model="openai:fail-429", messages=HELLO))
    assert e.status_code == 429
    assert e.response.headers.get("retry-after") == "7", dict(e.response.headers)
    err = assert_error_shape(error_json(e))
    assert err["message"].startswith("You exceeded your current quota"), err


def test_upstream_error_code_preserved(client):
    """An OpenAI-wire provider's own error type/code reach the client: `insufficient_quota`
    (top up billing, retrying is useless) must not turn into `rate_limit_exceeded` (retry later)."""
    e = _sdk_error(openai.RateLimitError, lambda: client.chat.completions.create(model="openai:fail-429", messages=HELLO))
    err = assert_error_shape(error_json(e))
    assert (err["type"], err["code"]) == ("insufficient_quota", "insufficient_quota"), err
    assert e.code == "insufficient_quota"


def test_upstream_down(client):
    e = _sdk_error(openai.InternalServerError, lambda: client.chat.completions.create(model="down:gpt-4o-mini", messages=HELLO))
    assert e.status_code == 502, e
    assert_error_shape(error_json(e), code="upstream_unavailable")


def test_upstream_down_streaming(client):
    e = _sdk_error(
        openai.InternalServerError,
        lambda: client.chat.completions.create(model="down:gpt-4o-mini", messages=HELLO, stream=True),
    )
    assert e.status_code == 502
    assert_error_shape(error_json(e), code="upstream_unavailable")


def test_egress_denied(client):
    e = _sdk_error(
        openai.PermissionDeniedError, lambda: client.chat.completions.create(model="blocked:gpt-4o-mini", messages=HELLO)
    )
    assert e.status_code == 403
    assert_error_shape(error_json(e), code="egress_denied")


def test_egress_denied_passthrough(gateway):
    c = support.sdk(gateway.base + "/v1/blocked")
    e = _sdk_error(openai.PermissionDeniedError, lambda: c.chat.completions.create(model="gpt-4o-mini", messages=HELLO))
    assert_error_shape(error_json(e), code="egress_denied")
