"""OpenTelemetry traces: a dedicated gateway exports one span per request over OTLP/HTTP (JSON)
to a collector stand-in on loopback, which records the export requests exactly as they arrive.

The caller's W3C `traceparent` becomes the span's trace and parent; `X-Portcullis-Session-Id`
becomes `gen_ai.conversation.id`; model, provider and token usage are `gen_ai.*` attributes;
refused requests are error spans.
"""

from __future__ import annotations

import http.server
import json
import threading
import time

import httpx
import pytest

import support

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class Collector(http.server.ThreadingHTTPServer):
    def __init__(self):
        self.exports: list[dict] = []
        self.content_types: list[str] = []
        super().__init__(("127.0.0.1", 0), Handler)

    def spans(self) -> list[dict]:
        out = []
        for e in list(self.exports):
            for rs in e["resourceSpans"]:
                for ss in rs["scopeSpans"]:
                    out.extend(ss["spans"])
        return out


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/v1/traces":
            self.server.content_types.append(self.headers.get("content-type", ""))
            self.server.exports.append(json.loads(body))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def collector():
    c = Collector()
    t = threading.Thread(target=c.serve_forever, daemon=True)
    t.start()
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def gw(collector, upstream, workdir):
    import conftest

    def render(port, admin_port, d):
        return f"""# Written by tests/clients/test_telemetry.py.
{support.server_section(port, admin_port, d)}
[egress]
allow_hosts = ["127.0.0.1"]

[telemetry]
otlp_endpoint = "http://127.0.0.1:{collector.server_address[1]}/v1/traces"
service_name = "portcullis-test"

[providers.mock]
kind = "mock"
models = ["echo"]

[providers.openai]
kind = "openai"
base_url = "http://127.0.0.1:{upstream.port}/v1"
api_key = "{support.OPENAI_UPSTREAM_KEY}"

[[auth.virtual_keys]]
name = "traced"
key_sha256 = "{support.sha256_hex(support.KEY_ALL)}"
providers = ["mock", "openai"]
"""

    with conftest.dedicated_gateway("telemetry", workdir / "telemetry", render) as g:
        yield g


def wait_for_span(collector, pred, timeout=5.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for s in collector.spans():
            if pred(s):
                return s
        time.sleep(0.1)
    raise AssertionError(f"no matching span among {json.dumps(collector.spans())[:2000]}")


def attrs(span) -> dict:
    out = {}
    for a in span["attributes"]:
        v = a["value"]
        out[a["key"]] = v.get("stringValue", v.get("intValue", v.get("doubleValue")))
    return out


def test_a_chat_is_a_span_in_the_callers_trace(gw, collector):
    m = support.marker()
    r = httpx.post(
        gw.base + "/v1/chat/completions",
        headers={**support.auth(), "traceparent": f"00-{TRACE}-{PARENT}-01", "x-portcullis-session-id": f"sess-{m}",
                 "x-portcullis-agent-id": "planner"},
        json={"model": "mock:echo", "messages": [{"role": "user", "content": f"trace {m}"}]},
        timeout=support.TIMEOUT,
    )
    assert r.status_code == 200, r.text
    span = wait_for_span(collector, lambda s: attrs(s).get("gen_ai.conversation.id") == f"sess-{m}")
    assert span["traceId"] == TRACE and span["parentSpanId"] == PARENT, span
    assert len(span["spanId"]) == 16 and span["spanId"] != PARENT
    assert span["name"] == "chat echo" and span["kind"] == 2 and span["status"]["code"] == 1, span
    a = attrs(span)
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "mock", a
    assert a["gen_ai.request.model"] == "echo" and a["gen_ai.agent.id"] == "planner", a
    usage = r.json()["usage"]
    assert a["gen_ai.usage.input_tokens"] == str(usage["prompt_tokens"]), a
    assert a["gen_ai.usage.output_tokens"] == str(usage["completion_tokens"]), a
    assert a["portcullis.request_id"] == r.headers["x-request-id"] and a["http.response.status_code"] == "200", a
    assert int(span["endTimeUnixNano"]) >= int(span["startTimeUnixNano"]) > 1_700_000_000 * 10**9
    assert all(ct.startswith("application/json") for ct in collector.content_types)
    resource = collector.exports[0]["resourceSpans"][0]["resource"]["attributes"]
    assert {"key": "service.name", "value": {"stringValue": "portcullis-test"}} in resource


def test_without_a_traceparent_a_new_trace_starts_and_errors_are_error_spans(gw, collector):
    m = support.marker()
    r = httpx.post(
        gw.base + "/v1/chat/completions",
        headers={"authorization": "Bearer pc-wrong", "x-portcullis-session-id": f"sess-{m}", "traceparent": "garbage"},
        json={"model": "mock:echo", "messages": [{"role": "user", "content": "x"}]},
        timeout=support.TIMEOUT,
    )
    assert r.status_code == 401
    span = wait_for_span(collector, lambda s: attrs(s).get("gen_ai.conversation.id") == f"sess-{m}")
    assert span["traceId"] not in (TRACE, "0" * 32) and len(span["traceId"]) == 32 and "parentSpanId" not in span
    assert span["status"]["code"] == 2 and "invalid API key" in span["status"]["message"], span
    assert "pc-wrong" not in json.dumps(collector.exports), "a presented key must never reach the collector"


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/openai/chat/completions"])
def test_the_upstream_call_is_a_child_of_the_gateways_span(gw, collector, upstream, route):
    m = support.marker()
    model = "openai:gpt-4o-mini" if route.startswith("/v1/chat") else "gpt-4o-mini"
    r = httpx.post(
        gw.base + route,
        headers={**support.auth(), "traceparent": f"00-{TRACE}-{PARENT}-01", "x-portcullis-session-id": f"sess-{m}"},
        json={"model": model, "messages": [{"role": "user", "content": f"trace {m}"}]},
        timeout=support.TIMEOUT,
    )
    assert r.status_code == 200, r.text
    span = wait_for_span(collector, lambda s: attrs(s).get("gen_ai.conversation.id") == f"sess-{m}")
    sent = upstream.find(m).header_all("traceparent")
    assert sent == [f"00-{TRACE}-{span['spanId']}-01"], (sent, span["spanId"])


def test_without_tracing_the_callers_traceparent_reaches_the_upstream_unchanged(client, upstream):
    m = support.marker()
    tp = f"00-{TRACE}-{PARENT}-01"
    client.chat.completions.create(
        model="openai:gpt-4o-mini", messages=[{"role": "user", "content": f"trace {m}"}], extra_headers={"traceparent": tp}
    )
    assert upstream.find(m).header_all("traceparent") == [tp]
    m = support.marker()
    client.chat.completions.create(
        model="openai:gpt-4o-mini", messages=[{"role": "user", "content": f"trace {m}"}], extra_headers={"traceparent": "junk"}
    )
    assert upstream.find(m).header_all("traceparent") == []
