"""Caps on concurrent work, on a dedicated gateway in front of the shared mock OpenAI upstream.

`providers.capped.max_in_flight = 1`: while one stream holds the provider's only slot, a request
naming `capped:` is 503 `upstream_overloaded` with `Retry-After`, and `auto` (tiers list `capped`
then `spare`) falls back to `spare`; the slot comes back when the stream ends. `server.max_in_flight
= 3`: a fourth concurrent LLM request is 503 `overloaded`, while health, models and metrics still
answer; the `portcullis_requests_in_flight` gauge shows the streams.
"""

from __future__ import annotations

import threading

import httpx
import openai
import pytest

import support

MSG = [{"role": "user", "content": "admission"}]


def render_config(upstream_port: int):
    def render(port: int, admin_port: int, workdir) -> str:
        return f"""# Written by tests/clients/test_admission.py.
{support.server_section(port, admin_port, workdir)}
max_in_flight = 3

[egress]
allow_hosts = ["127.0.0.1"]

[providers.capped]
kind = "openai"
base_url = "http://127.0.0.1:{upstream_port}/v1"
api_key = "{support.OPENAI_UPSTREAM_KEY}"
max_in_flight = 1

[providers.spare]
kind = "openai"
base_url = "http://127.0.0.1:{upstream_port}/v1"
api_key = "{support.OPENAI_UPSTREAM_KEY}"

[routing.tiers]
simple = ["capped:gpt-4o-mini", "spare:gpt-4o-mini"]
medium = ["capped:gpt-4o-mini", "spare:gpt-4o-mini"]
complex = ["capped:gpt-4o-mini", "spare:gpt-4o-mini"]
reasoning = ["capped:gpt-4o-mini", "spare:gpt-4o-mini"]

[[auth.virtual_keys]]
name = "admission"
key_sha256 = "{support.sha256_hex(support.KEY_ALL)}"
providers = ["capped", "spare"]
"""

    return render


@pytest.fixture(scope="module")
def gw(upstream, workdir):
    import conftest

    with conftest.dedicated_gateway("admission", workdir / "admission", render_config(upstream.port)) as g:
        yield g


class SlowStream:
    """A `slow-stream` chat (6 chunks, 0.4 s apart) held open in a thread; `started` is set once
    its first chunk arrived, so its slots are taken."""

    def __init__(self, gw, provider: str):
        self.started = threading.Event()
        self.chunks = 0
        self.error: Exception | None = None
        client = support.sdk(gw.base + "/v1")
        self.thread = threading.Thread(target=self._run, args=(client, provider), daemon=True)
        self.thread.start()
        assert self.started.wait(support.TIMEOUT), f"the stream on {provider} never started: {self.error!r}"

    def _run(self, client, provider):
        try:
            for _ in client.chat.completions.create(model=f"{provider}:slow-stream", messages=MSG, stream=True):
                self.chunks += 1
                self.started.set()
        except Exception as e:  # noqa: BLE001 - reported by join()
            self.error = e
            self.started.set()

    def join(self):
        self.thread.join(support.TIMEOUT)
        assert self.error is None and self.chunks >= 6, (self.error, self.chunks)


def chat(gw, model: str):
    return support.sdk(gw.base + "/v1").chat.completions.with_raw_response.create(model=model, messages=MSG)


def test_a_full_provider_is_503_and_auto_falls_back_to_the_next_candidate(gw):
    s = SlowStream(gw, "capped")
    try:
        full_provider_checks(gw)
    finally:
        s.join()
    # The stream's end returned the slot.
    assert chat(gw, "capped:gpt-4o-mini").headers["x-portcullis-provider"] == "capped"


def full_provider_checks(gw):
    with pytest.raises(openai.InternalServerError) as info:
        chat(gw, "capped:gpt-4o-mini")
    e = info.value
    support.assert_error_shape(support.error_json(e), 503, code="upstream_overloaded")
    assert e.response.headers.get("retry-after") == "1", e.response.headers
    raw = chat(gw, "auto")
    assert raw.headers["x-portcullis-provider"] == "spare", raw.headers
    assert raw.headers["x-portcullis-route-fallbacks"] == "1", raw.headers


def in_flight_gauge(gw) -> float:
    text = httpx.get(gw.admin + "/metrics", timeout=support.TIMEOUT).text
    (line,) = [line for line in text.splitlines() if line.startswith("portcullis_requests_in_flight ")]
    return float(line.split()[1])


def test_the_node_caps_llm_requests_in_flight(gw):
    streams = [SlowStream(gw, "spare") for _ in range(3)]
    try:
        assert in_flight_gauge(gw) == 3
        with pytest.raises(openai.InternalServerError) as info:
            chat(gw, "spare:gpt-4o-mini")
        support.assert_error_shape(support.error_json(info.value), 503, code="overloaded")
        assert info.value.response.headers.get("retry-after") == "1"
        # What is not an LLM request still answers.
        assert httpx.get(gw.base + "/health", timeout=support.TIMEOUT).status_code == 200
        assert support.sdk(gw.base + "/v1").models.list().data
    finally:
        for s in streams:
            s.join()
    assert in_flight_gauge(gw) == 0
    assert chat(gw, "spare:gpt-4o-mini").headers["x-portcullis-provider"] == "spare"
