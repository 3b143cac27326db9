"""GET /metrics on the admin listener: Prometheus text with request counts that move."""

import re
import time

import httpx

import support
from support import marker

SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\d+)?$')
LABEL = re.compile(r'(?P<k>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<v>(?:[^"\\]|\\.)*)"')


def scrape(gw) -> tuple[str, list]:
    r = httpx.get(gw.admin + "/metrics", timeout=support.TIMEOUT)
    assert r.status_code == 200, r.text[:300]
    samples = []
    for line in r.text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not Prometheus text format: {line!r}"
        labels = {x["k"]: x["v"] for x in LABEL.finditer(m["labels"] or "")}
        samples.append((m["name"], labels, float(m["value"])))
    return r, samples


def total(samples, **want) -> float:
    return sum(
        v for n, labels, v in samples if n == "portcullis_requests_total" and all(labels.get(k) == x for k, x in want.items())
    )


def wait_for(gw, pred, timeout=3.0):
    """Counters are settled after the response (logging phase): poll briefly."""
    deadline = time.monotonic() + timeout
    while True:
        _, samples = scrape(gw)
        if pred(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def test_metrics_text_format(gateway, client):
    client.chat.completions.create(model="mock:echo", messages=[{"role": "user", "content": marker()}])
    r, samples = scrape(gateway)
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    assert "# TYPE portcullis_requests_total counter" in r.text, r.text[:2000]
    req = [s for s in samples if s[0] == "portcullis_requests_total"]
    assert req, "no portcullis_requests_total samples"
    for _, labels, _ in req:
        assert {"route", "provider", "model", "status"} <= labels.keys(), labels
        for k, v in labels.items():
            assert "pc-" not in v, f"a credential-like value in label {k}={v!r}"


def test_request_counts_increase(gateway, client):
    _, before = scrape(gateway)
    mock_before = total(before, provider="mock")
    openai_before = total(before, provider="openai")
    for _ in range(3):
        client.chat.completions.create(model="mock:echo", messages=[{"role": "user", "content": marker()}])
    for _ in range(2):
        client.chat.completions.create(model="openai:gpt-4o-mini", messages=[{"role": "user", "content": marker()}])
    after = wait_for(
        gateway, lambda s: total(s, provider="mock") >= mock_before + 3 and total(s, provider="openai") >= openai_before + 2
    )
    assert total(after, provider="mock") - mock_before == 3, [s for s in after if s[0] == "portcullis_requests_total"]
    assert total(after, provider="openai") - openai_before == 2


def test_errors_are_counted(gateway):
    _, before = scrape(gateway)
    c = support.sdk(gateway.base + "/v1")
    try:
        c.chat.completions.create(model="nope:x", messages=[{"role": "user", "content": "x"}])
    except Exception:
        pass

    def errors(s):
        return sum(
            v
            for n, labels, v in s
            if n == "portcullis_requests_total" and labels.get("status", "").startswith("4")
        )

    after = wait_for(gateway, lambda s: errors(s) > errors(before))
    assert errors(after) > errors(before), "a 400 was not counted with a 4xx status label"



def test_errors_cost_and_rejections_carry_the_proxy(gateway, client):
    """errors_total by OpenAI code, cost_usd_total and budget_rejections_total, each labelled
    with the proxy that served the request."""
    import openai

    def value(samples, name, **want):
        return sum(v for n, labels, v in samples if n == name and all(labels.get(k) == x for k, x in want.items()))

    _, before = scrape(gateway)
    try:
        client.chat.completions.create(model="nope:x", messages=[{"role": "user", "content": "x"}])
    except openai.BadRequestError:
        pass
    client.chat.completions.create(model="openai:gpt-4o-mini", messages=[{"role": "user", "content": marker()}])
    limited = support.sdk(gateway.base + "/v1", api_key=support.KEY_TOKEN_LIMITED)
    try:
        limited.chat.completions.create(model="openai:gpt-4o-mini", max_tokens=100_000,
                                        messages=[{"role": "user", "content": "x"}])
    except openai.RateLimitError:
        pass
    after = wait_for(gateway, lambda s: value(s, "portcullis_budget_rejections_total", proxy="default")
                     > value(before, "portcullis_budget_rejections_total", proxy="default"))
    code = dict(name="portcullis_errors_total", code="model_not_found", proxy="default")
    assert value(after, **code) == value(before, **code) + 1
    rejected = dict(name="portcullis_budget_rejections_total", scope="key", metric="tokens", proxy="default")
    assert value(after, **rejected) == value(before, **rejected) + 1
    spent = dict(name="portcullis_cost_usd_total", provider="openai", model="gpt-4o-mini", proxy="default")
    assert value(after, **spent) > value(before, **spent)
