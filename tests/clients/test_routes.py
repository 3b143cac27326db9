"""The other routes and provider kinds: model-router proxies, native pass-through, Azure,
an openai_compatible preset with a base_url override, and the built-in mock provider."""

import json

import openai
import pytest

import support
from mock_openai import reply_text
from support import (
    AZURE_UPSTREAM_KEY,
    CALLER_OWN_OPENAI_KEY,
    GROQ_UPSTREAM_KEY,
    KEY_ALL,
    OPENAI_UPSTREAM_KEY,
    marker,
)


def test_model_router_chat(gateway, upstream):
    c = support.sdk(gateway.base + "/v1/model-router/team-a")
    m = marker()
    raw = c.chat.completions.with_raw_response.create(
        model="openai:gpt-4o-mini", messages=[{"role": "user", "content": m}]
    )
    assert raw.parse().choices[0].message.content == reply_text(m)
    assert raw.headers.get("x-portcullis-provider") == "openai"
    up = upstream.find(m)
    assert up.path == "/v1/chat/completions"
    assert up.json()["model"] == "gpt-4o-mini"
    assert up.header("authorization") == f"Bearer {OPENAI_UPSTREAM_KEY}"

    r = c.chat.completions.create(model="mock:echo", messages=[{"role": "user", "content": m}])
    assert r.choices[0].message.content.endswith(f"You said: {m}")


def test_model_router_stream(gateway):
    c = support.sdk(gateway.base + "/v1/model-router/team-a")
    m = marker()
    chunks = list(c.chat.completions.create(model="openai:gpt-4o-mini", messages=[{"role": "user", "content": m}], stream=True))
    assert "".join(x.choices[0].delta.content or "" for x in chunks if x.choices) == reply_text(m)


def test_passthrough_with_virtual_key(gateway, upstream):
    c = support.sdk(gateway.base + "/v1/openai")
    m = marker()
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=[{"role": "user", "content": m}])
    r = raw.parse()
    assert r.choices[0].message.content == reply_text(m)
    up = upstream.find(m)
    assert up.path == "/v1/chat/completions", up.path
    assert up.json()["model"] == "gpt-4o-mini"
    assert up.header_all("authorization") == [f"Bearer {OPENAI_UPSTREAM_KEY}"], "virtual key must be swapped for the provider key"
    assert not any(KEY_ALL in v for _, v in up.headers)


def test_passthrough_body_is_forwarded_unchanged(http, upstream):
    """No translation on the native route: the upstream gets the caller's exact bytes."""
    m = marker()
    body = (
        '{ "messages": [ {"role": "user", "content": "%s"} ],\n  "model": "gpt-4o-mini", "temperature": 1.0,'
        ' "logit_bias": {"50256": -100}, "user": "u-1" }' % m
    ).encode()
    r = http.post("/v1/openai/chat/completions", headers={**support.auth(), "content-type": "application/json"}, content=body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == reply_text(m)
    assert upstream.find(m).body == body


def test_passthrough_with_providers_own_key(gateway, upstream):
    """proxies.default.passthrough_provider_keys = true: a non-`pc-` key goes upstream unchanged."""
    c = support.sdk(gateway.base + "/v1/openai", api_key=CALLER_OWN_OPENAI_KEY)
    m = marker()
    r = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": m}])
    assert r.choices[0].message.content == reply_text(m)
    up = upstream.find(m)
    assert up.header_all("authorization") == [f"Bearer {CALLER_OWN_OPENAI_KEY}"], up.headers


def test_passthrough_stream(gateway):
    c = support.sdk(gateway.base + "/v1/openai")
    m = marker()
    chunks = list(c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": m}], stream=True))
    assert "".join(x.choices[0].delta.content or "" for x in chunks if x.choices) == reply_text(m)
    assert not [x for x in chunks if not x.choices], "usage chunk the client did not ask for"


def test_passthrough_models(gateway, upstream):
    c = support.sdk(gateway.base + "/v1/openai")
    ids = [m.id for m in c.models.list().data]
    assert "gpt-4o-mini" in ids, ids
    assert any(r.method == "GET" and r.path == "/v1/models" for r in upstream.requests)


def test_passthrough_reaches_only_inference_endpoints_with_the_gateways_keys(gateway, upstream, http):
    """The pooled provider key reaches the inference API, not files, fine-tunes, stored responses
    or organisation admin; the caller's own provider key is not held to that."""
    seen = len(upstream.requests)
    c = support.sdk(gateway.base + "/v1/openai")
    with pytest.raises(openai.PermissionDeniedError) as e:
        c.files.list()
    err = support.error_json(e.value)["error"]
    assert err["code"] == "endpoint_not_allowed" and "passthrough_paths" in err["message"], err
    for method, path in [("GET", "/v1/openai/organization/users"), ("POST", "/v1/openai/fine_tuning/jobs"),
                         ("GET", "/v1/openai/responses/resp_1"), ("POST", "/v1/openai/chat/%2e%2e/files"),
                         ("POST", "/v1/openai/chat%2Fcompletions")]:
        r = http.request(method, path, headers=support.auth(), content=b"{}")
        assert r.status_code == 403, (method, path, r.text)
        support.assert_error_shape(r.json(), 403)
    assert len(upstream.requests) == seen, "nothing refused reached the provider"
    # The caller's own key goes through to whatever the provider answers.
    own = support.sdk(gateway.base + "/v1/openai", api_key=CALLER_OWN_OPENAI_KEY)
    with pytest.raises(openai.NotFoundError):
        own.files.list()
    assert upstream.requests[-1].path == "/v1/files"


def test_azure(client, upstream):
    m = marker()
    raw = client.chat.completions.with_raw_response.create(model="azure:gpt-4o", messages=[{"role": "user", "content": m}])
    assert raw.parse().choices[0].message.content == reply_text(m)
    assert raw.headers.get("x-portcullis-provider") == "azure"
    up = upstream.find(m)
    assert up.method == "POST"
    assert up.path == "/openai/deployments/gpt4o-deploy/chat/completions?api-version=2024-10-21", up.path
    assert up.header("api-key") == AZURE_UPSTREAM_KEY, up.headers
    assert up.header("authorization") is None, f"Azure gets api-key, not Authorization: {up.headers}"
    assert not any(KEY_ALL in v for _, v in up.headers)


def test_azure_stream(client, upstream):
    m = marker()
    chunks = list(client.chat.completions.create(model="azure:gpt-4o", messages=[{"role": "user", "content": m}], stream=True))
    text = "".join(x.choices[0].delta.content or "" for x in chunks if x.choices)
    assert text == reply_text(m)
    assert upstream.find(m).path.startswith("/openai/deployments/gpt4o-deploy/chat/completions?")


def test_groq_preset_with_base_url_override(client, upstream):
    m = marker()
    raw = client.chat.completions.with_raw_response.create(
        model="groq:llama-3.1-8b-instant", messages=[{"role": "user", "content": m}]
    )
    assert raw.parse().choices[0].message.content == reply_text(m)
    assert raw.headers.get("x-portcullis-provider") == "groq"
    up = upstream.find(m)
    assert up.path == "/groq/openai/v1/chat/completions", up.path
    assert up.json()["model"] == "llama-3.1-8b-instant"
    assert up.header_all("authorization") == [f"Bearer {GROQ_UPSTREAM_KEY}"]


def test_mock_provider_chat(client):
    m = marker()
    raw = client.chat.completions.with_raw_response.create(model="mock:echo", messages=[{"role": "user", "content": f"hi {m}"}])
    r = raw.parse()
    assert r.choices[0].message.content.endswith(f"You said: hi {m}")
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.total_tokens > 0
    assert raw.headers.get("x-portcullis-provider") == "mock"


def test_mock_provider_limited_key(mockonly_client):
    m = marker()
    r = mockonly_client.chat.completions.create(model="mock:echo", messages=[{"role": "user", "content": m}])
    assert r.choices[0].message.content.endswith(f"You said: {m}")


def test_large_request_body_5mb(client, http, upstream):
    """A 5 MB prompt goes through whole: SDK sees 200, the upstream gets every byte."""
    m = marker()
    filler = ("The quick brown fox jumps over the lazy dog 0123456789. " * 100_000)[: 5 * 1024 * 1024]
    content = f"{m} {filler}"
    r = client.chat.completions.create(model="openai:gpt-4o-mini", messages=[{"role": "user", "content": content}])
    assert r.choices[0].message.content == reply_text(content)
    up = upstream.find(m)
    assert len(up.body) > 5 * 1024 * 1024
    assert up.json()["messages"][0]["content"] == content

    # Byte-for-byte: only the model member changes.
    m2 = marker()
    template = '{"model":"%s","messages":[{"role":"user","content":"' + m2 + " " + filler + '"}],"temperature":0.5}'
    sent = (template % "openai:gpt-4o-mini").encode()
    r = http.post("/v1/chat/completions", headers={**support.auth(), "content-type": "application/json"}, content=sent)
    assert r.status_code == 200, r.text[:500]
    got = upstream.find(m2).body
    expected = (template % "gpt-4o-mini").encode()
    assert len(got) == len(expected), f"upstream got {len(got)} bytes, expected {len(expected)}"
    assert got == expected, "the upstream body differs from the client's in more than the model member"
