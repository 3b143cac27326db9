"""Chat Completions through /v1/chat/completions with the official SDK: routing, prefix
stripping, upstream credential injection, response headers, aliases and metadata headers."""

import json

import support
from mock_openai import TEXT_COMPLETION, reply_text
from support import KEY_ALL, OPENAI_UPSTREAM_KEY, marker


def test_health(http):
    r = http.get("/health")
    assert r.status_code == 200, r.text


def test_chat_routes_to_openai_and_strips_prefix(client, upstream):
    m = marker()
    raw = client.chat.completions.with_raw_response.create(
        model="openai:gpt-4o-mini",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Hello {m}"}],
        temperature=0.2,
        max_tokens=50,
    )
    assert raw.status_code == 200
    r = raw.parse()
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == reply_text(f"Hello {m}")
    assert r.choices[0].finish_reason == "stop"
    # usage passes through untouched
    assert r.usage.prompt_tokens == TEXT_COMPLETION["usage"]["prompt_tokens"]
    assert r.usage.completion_tokens == TEXT_COMPLETION["usage"]["completion_tokens"]

    assert raw.headers.get("x-portcullis-provider") == "openai", dict(raw.headers)
    assert "gpt-4o-mini" in (raw.headers.get("x-portcullis-model") or ""), dict(raw.headers)

    up = upstream.find(m)
    assert up.method == "POST"
    assert up.path == "/v1/chat/completions", up.path
    body = up.json()
    assert body["model"] == "gpt-4o-mini", "the provider prefix must be stripped"
    assert body["temperature"] == 0.2 and body["max_tokens"] == 50
    assert body["messages"][1]["content"] == f"Hello {m}"
    assert "stream_options" not in body, "a non-streaming request must not get stream_options"


def test_upstream_gets_provider_key_never_the_virtual_key(client, upstream):
    m = marker()
    client.chat.completions.create(model="openai:gpt-4o-mini", messages=[{"role": "user", "content": m}])
    up = upstream.find(m)
    assert up.header_all("authorization") == [f"Bearer {OPENAI_UPSTREAM_KEY}"], up.headers
    assert up.header("accept-encoding") == "identity", up.headers
    for name, value in up.headers:
        assert KEY_ALL not in value, f"the caller's virtual key leaked upstream in header {name}"
    assert KEY_ALL.encode() not in up.body
    # The upstream Host is the provider's, not the gateway's.
    assert up.header("host") in (f"127.0.0.1:{upstream.port}", "127.0.0.1"), up.header("host")


def test_content_parts_and_unicode_survive(client, upstream):
    m = marker()
    text = f"héllo ✓ 日本語 \"quoted\" \\ {m}"
    r = client.chat.completions.create(
        model="openai:gpt-4o-mini",
        messages=[{"role": "user", "content": [{"type": "text", "text": text}]}],
    )
    assert r.choices[0].message.content == reply_text(text)
    assert upstream.find(m).json()["messages"][0]["content"][0]["text"] == text


def test_alias_routes_to_mock(client):
    m = marker()
    raw = client.chat.completions.with_raw_response.create(model="echo", messages=[{"role": "user", "content": m}])
    r = raw.parse()
    assert r.choices[0].message.content.endswith(f"You said: {m}")
    assert raw.headers.get("x-portcullis-provider") == "mock"


def test_metadata_headers_accepted(client, upstream):
    m = marker()
    r = client.chat.completions.create(
        model="openai:gpt-4o-mini",
        messages=[{"role": "user", "content": m}],
        extra_headers={
            "X-Portcullis-Agent-Id": "agent-7",
            "X-Portcullis-User-Id": "user-42",
            "X-Portcullis-Session-Id": "sess-1",
            "X-Portcullis-Execution-Id": "exec-9",
            "X-Portcullis-Meta": "agent-7/exec-9/sess-1",
            "X-Archestra-Agent-Id": "legacy-agent",
        },
    )
    assert r.choices[0].message.content == reply_text(m)
    upstream.find(m)


def test_extra_fields_pass_through(client, upstream):
    """Fields the gateway does not know are the provider's business: forwarded verbatim."""
    m = marker()
    client.chat.completions.create(
        model="openai:gpt-4o-mini",
        messages=[{"role": "user", "content": m}],
        seed=7,
        response_format={"type": "json_object"},
        extra_body={"some_future_param": {"nested": [1, 2, 3]}},
    )
    body = upstream.find(m).json()
    assert body["seed"] == 7
    assert body["response_format"] == {"type": "json_object"}
    assert body["some_future_param"] == {"nested": [1, 2, 3]}


def test_raw_http_response_is_plain_json(http, upstream):
    m = marker()
    r = http.post(
        "/v1/chat/completions",
        headers=support.auth(),
        content=json.dumps({"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": m}]}),
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    assert "content-encoding" not in r.headers, "the gateway must not hand back a body it did not decode"
    assert r.json()["choices"][0]["message"]["content"] == reply_text(m)


def test_keepalive_many_sequential_requests(client, upstream):
    """Pooled upstream connections and client keep-alive hold up over a burst."""
    for i in range(20):
        m = marker()
        r = client.chat.completions.create(model="openai:gpt-4o-mini", messages=[{"role": "user", "content": m}])
        assert r.choices[0].message.content == reply_text(m), f"request {i} got someone else's answer"
