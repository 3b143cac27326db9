"""Streaming Chat Completions: SSE framing, chunk-by-chunk forwarding, and the usage chunk
the gateway requests for metering but only hands on when the client asked for it."""

import json
import time

import openai
import pytest

import support
from mock_openai import BREAK_AFTER, SLOW_CHUNKS, SLOW_INTERVAL, TEXT_STREAM, reply_text
from support import marker, raw_sse_events


def _collect(stream):
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, text


def test_stream_text_without_usage_chunk(client, upstream):
    m = marker()
    stream = client.chat.completions.create(
        model="openai:gpt-4o-mini", messages=[{"role": "user", "content": f"stream {m}"}], stream=True
    )
    chunks, text = _collect(stream)
    assert text == reply_text(f"stream {m}")
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices and chunks[-1].choices[0].finish_reason == "stop"
    usage_only = [c for c in chunks if not c.choices]
    assert not usage_only, f"the client did not ask for usage but got a usage chunk: {usage_only}"
    assert all(c.usage is None for c in chunks), "usage leaked into a chunk the client did not ask for"

    body = upstream.find(m).json()
    assert body["model"] == "gpt-4o-mini"
    assert body["stream"] is True
    assert body.get("stream_options", {}).get("include_usage") is True, (
        "the gateway must ask the upstream for the usage chunk to meter the stream"
    )


def test_stream_text_with_usage_chunk_when_asked(client, upstream):
    m = marker()
    stream = client.chat.completions.create(
        model="openai:gpt-4o-mini",
        messages=[{"role": "user", "content": f"usage {m}"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks, text = _collect(stream)
    assert text == reply_text(f"usage {m}")
    usage_only = [c for c in chunks if not c.choices]
    assert len(usage_only) == 1, f"expected exactly one usage chunk, got {len(usage_only)}"
    assert chunks[-1] is usage_only[0], "the usage chunk comes last"
    expected = TEXT_STREAM[-2]["usage"]
    u = usage_only[0].usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (
        expected["prompt_tokens"],
        expected["completion_tokens"],
        expected["total_tokens"],
    )
    assert upstream.find(m).json()["stream_options"] == {"include_usage": True}


def test_stream_raw_sse_framing(http, upstream):
    m = marker()
    with http.stream(
        "POST",
        "/v1/chat/completions",
        headers=support.auth(),
        content=json.dumps(
            {"model": "openai:gpt-4o-mini", "messages": [{"role": "user", "content": m}], "stream": True}
        ),
    ) as r:
        body = r.read()
        assert r.status_code == 200, body
        assert r.headers["content-type"].startswith("text/event-stream"), r.headers
        assert "content-length" not in r.headers, "a stream must not carry a content-length"
        assert r.headers.get("x-portcullis-provider") == "openai", r.headers
        assert "gpt-4o-mini" in r.headers.get("x-portcullis-model", ""), r.headers
    events = raw_sse_events(body)
    assert events[-1] == "[DONE]", events[-3:]
    assert body.endswith(b"data: [DONE]\n\n"), body[-80:]
    parsed = [json.loads(e) for e in events[:-1]]
    assert all(p["object"] == "chat.completion.chunk" for p in parsed)
    assert "".join(p["choices"][0]["delta"].get("content") or "" for p in parsed if p["choices"]) == reply_text(m)
    assert not [p for p in parsed if p["choices"] == []], "usage-only chunk not stripped"


def test_slow_stream_is_forwarded_chunk_by_chunk(client):
    """The first chunk must reach the client long before the upstream finishes."""
    start = time.monotonic()
    stream = client.chat.completions.create(
        model="openai:slow-stream", messages=[{"role": "user", "content": "go slowly"}], stream=True
    )
    arrivals = []
    pieces = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - start)
            pieces.append(chunk.choices[0].delta.content)
    total = time.monotonic() - start
    assert pieces == [f"slow{i} " for i in range(SLOW_CHUNKS)]
    upstream_duration = (SLOW_CHUNKS - 1) * SLOW_INTERVAL  # 2.0 s
    assert total >= upstream_duration * 0.9, f"stream finished in {total:.2f}s, faster than the upstream sent it?"
    assert arrivals[0] < 1.0, (
        f"first content chunk arrived after {arrivals[0]:.2f}s of a {total:.2f}s stream: the gateway buffers"
    )
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert sum(1 for g in gaps if g > SLOW_INTERVAL * 0.5) >= SLOW_CHUNKS - 2, (
        f"chunks arrived in bursts, not as sent (gaps {['%.2f' % g for g in gaps]})"
    )


def test_mock_provider_stream(client):
    m = marker()
    chunks, text = _collect(
        client.chat.completions.create(model="mock:echo", messages=[{"role": "user", "content": m}], stream=True)
    )
    assert text.endswith(f"You said: {m}"), text
    assert not [c for c in chunks if not c.choices]
    chunks, text = _collect(
        client.chat.completions.create(
            model="mock:echo",
            messages=[{"role": "user", "content": m}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert text.endswith(f"You said: {m}")
    usage = [c for c in chunks if not c.choices]
    assert len(usage) == 1 and usage[0].usage.total_tokens > 0, usage


def test_client_disconnect_mid_stream_does_not_wedge(gateway, upstream, client):
    """Closing the stream early (the user pressed stop) leaves the gateway healthy."""
    stream = client.chat.completions.create(
        model="openai:slow-stream", messages=[{"role": "user", "content": "stop me"}], stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()
    support.assert_gateway_serves(gateway, upstream)


def test_upstream_dies_mid_stream(gateway, upstream, client):
    """SPEC Reliability: after the first byte, an upstream failure ends the stream with an error
    event, so the SDK raises instead of handing back a silently truncated answer."""
    stream = client.chat.completions.create(
        model="openai:break-stream", messages=[{"role": "user", "content": "break"}], stream=True
    )
    got = []
    with pytest.raises(openai.APIError) as info:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    assert got == [f"part{i} " for i in range(BREAK_AFTER)], "chunks before the failure must still arrive"
    assert not isinstance(info.value, openai.APIStatusError), "the 200 header is out: the error comes in-stream"
    assert info.value.message, info.value
    support.assert_gateway_serves(gateway, upstream)


def test_stream_options_other_members_kept(client, upstream):
    """Asking upstream for usage must not drop the client's other stream_options."""
    m = marker()
    chunks, text = _collect(
        client.chat.completions.create(
            model="openai:gpt-4o-mini",
            messages=[{"role": "user", "content": m}],
            stream=True,
            stream_options={"include_usage": False, "include_obfuscation": False},
        )
    )
    assert text == reply_text(m)
    assert not [c for c in chunks if not c.choices], "the client said include_usage false"
    so = upstream.find(m).json()["stream_options"]
    assert so == {"include_usage": True, "include_obfuscation": False}, so


def test_stream_split_at_arbitrary_bytes(client):
    """Events and multi-byte characters split across upstream reads are reassembled intact."""
    text_in = f"héllo ✓ 日本語 🎉 {marker()}"
    for include_usage in (False, True):
        chunks, text = _collect(
            client.chat.completions.create(
                model="openai:split-stream",
                messages=[{"role": "user", "content": text_in}],
                stream=True,
                stream_options={"include_usage": include_usage},
            )
        )
        assert text == reply_text(text_in)
        assert len([c for c in chunks if not c.choices]) == (1 if include_usage else 0)


def test_concurrent_streams_do_not_queue(client):
    """Eight slow streams at once finish in about the time of one (server.threads = 2)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i):
        chunks = client.chat.completions.create(
            model="openai:slow-stream", messages=[{"role": "user", "content": f"c{i}"}], stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    start = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(one, range(8)))
    took = time.monotonic() - start
    assert texts == ["".join(f"slow{i} " for i in range(SLOW_CHUNKS))] * 8
    one_stream = (SLOW_CHUNKS - 1) * SLOW_INTERVAL
    assert took < one_stream * 2, f"8 concurrent {one_stream:.1f}s streams took {took:.1f}s: requests are queued"


def test_a_stream_past_max_response_seconds_ends_with_an_error(upstream, natives, workdir):
    """upstream.max_response_seconds bounds the whole answer, not only each silence: a second
    gateway with a 1 s bound cuts the 2.4 s slow stream with an in-stream error."""
    import conftest
    from mock_openai import closed_port

    ports = {name: m.port for name, m in natives.items()}
    base = conftest.render_config(upstream.port, closed_port(), ports)

    def render(port, admin_port, d):
        return base(port, admin_port, d).replace("[upstream]\n", "[upstream]\nmax_response_seconds = 1\n", 1)

    gw = support.Gateway("deadline", workdir / "deadline", render)
    gw.start()
    try:
        client = support.sdk(gw.base + "/v1")
        stream = client.chat.completions.create(
            model="openai:slow-stream", messages=[{"role": "user", "content": "too slow"}], stream=True
        )
        got = []
        with pytest.raises(openai.APIError) as info:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    got.append(chunk.choices[0].delta.content)
        assert 1 <= len(got) < SLOW_CHUNKS, got
        assert "max_response_seconds" in str(info.value)
        # A fast answer on the same gateway is unaffected.
        r = client.chat.completions.create(model="mock:echo", messages=[{"role": "user", "content": "hi"}])
        assert r.choices[0].message.content
    finally:
        gw.stop()
