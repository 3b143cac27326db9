"""`model: "auto"`: the classifier picks a tier, inline overrides pick one explicitly and are
stripped before the upstream sees the text, policies cap both, and a failing candidate falls back
to the next one. The tier map of the test config sends tier T to `openai:tier-T`, so the model the
mock upstream receives tells which tier was chosen.
"""

from __future__ import annotations

import json
import subprocess
import time

import openai
import pytest

import support
from support import KEY_CAPPED, KEY_OPENAI_MINI, KEY_OPENAI_MODELS, marker

TIERS = ["simple", "medium", "complex", "reasoning"]


def ask(client, text: str, **kw):
    """One `auto` request; returns (parsed completion, raw response headers)."""
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": text}], **kw)
    return raw.parse(), raw.headers


def upstream_request(upstream, m: str) -> dict:
    return upstream.find(m).json()


def last_user_text(req: dict) -> str:
    return [x for x in req["messages"] if x["role"] == "user"][-1]["content"]


def test_auto_routes_to_the_classified_tier(client, upstream):
    easy_m, hard_m = marker(), marker()
    _, easy = ask(client, f"hi {easy_m}")
    hard_text = (
        f"{hard_m} A train leaves at 3:15 pm going 48 mph; a second leaves 40 minutes later at 62 mph. "
        "The first stops for 12 minutes every 90 miles and the second pays a 15% toll surcharge on each "
        "$3.50 fare per 25 miles. Step by step, derive when and where the second train overtakes the "
        "first, then prove the answer is unique and compute the total tolls paid up to that point."
    )
    _, hard = ask(client, hard_text)
    for h, m in ((easy, easy_m), (hard, hard_m)):
        tier = h["x-portcullis-tier"]
        assert tier in TIERS, h
        assert h["x-portcullis-classified-tier"] == tier
        assert upstream_request(upstream, m)["model"] == f"tier-{tier}", "the tier's model must be served"
        assert h["x-portcullis-model"] == f"tier-{tier}"
        assert "x-portcullis-route-override" not in h
    assert float(hard["x-portcullis-route-score"]) > float(easy["x-portcullis-route-score"]), (easy, hard)
    assert TIERS.index(hard["x-portcullis-tier"]) >= TIERS.index(easy["x-portcullis-tier"])


def test_access_log_records_the_routing_decision(client, gateway):
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": f"/complex summarize {marker()}"}])
    rid = raw.headers["x-request-id"]
    rows = []
    for _ in range(50):  # the access log is written when the request ends
        rows = [json.loads(line[line.index("{"):]) for line in gateway.log_text().splitlines()
                if rid in line and "{" in line]
        if rows:
            break
        time.sleep(0.05)
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["route"] == "chat_completions" and row["model"] == "tier-complex", row
    assert row["routing"]["tier"] == "complex" and row["routing"]["override"] == "complex", row
    assert row["routing"]["classified"] == raw.headers["x-portcullis-classified-tier"], row
    assert float(raw.headers["x-portcullis-route-score"]) == pytest.approx(row["routing"]["score"], abs=1e-3)


@pytest.mark.parametrize("prefix,tier", [
    ("/max", "reasoning"),
    ("/simple", "simple"),
    ("[complex]", "complex"),
    ("deep mode:", "reasoning"),
    ("balanced mode:", "medium"),
])
def test_override_picks_tier_and_is_stripped(client, upstream, prefix, tier):
    m = marker()
    c, h = ask(client, f"{prefix} Analyze this distributed system for race conditions {m}")
    assert h["x-portcullis-tier"] == tier
    assert h["x-portcullis-route-override"] == tier
    req = upstream_request(upstream, m)
    assert req["model"] == f"tier-{tier}"
    text = last_user_text(req)
    assert text == f"Analyze this distributed system for race conditions {m}", text
    assert c.choices[0].message.content == f"Mock upstream reply to: {text}"


def test_bare_max_and_streaming(client, upstream):
    m = marker()
    chunks = list(client.chat.completions.create(
        model="auto", stream=True,
        messages=[{"role": "user", "content": f"earlier turn {m}"}, {"role": "assistant", "content": "ok"},
                  {"role": "user", "content": "/max"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    req = upstream.find(m).json()
    assert req["model"] == "tier-reasoning"
    assert last_user_text(req) == "", "a bare /max leaves an empty turn, never the override text"


def test_override_only_in_last_user_message(client, upstream):
    m = marker()
    client.chat.completions.create(model="auto", messages=[
        {"role": "user", "content": f"/max old request {m}"}, {"role": "assistant", "content": "done"},
        {"role": "user", "content": f"simple mode of transport? {m}"},
    ])
    req = upstream.find(m).json()
    assert req["messages"][0]["content"] == f"/max old request {m}", "earlier turns are never rewritten"
    assert req["messages"][-1]["content"] == f"simple mode of transport? {m}", "no colon: not an override"


def test_policy_caps_an_override(gateway, upstream):
    capped = support.sdk(gateway.base + "/v1", api_key=KEY_CAPPED)
    m = marker()
    _, h = ask(capped, f"/max prove the Riemann hypothesis {m}")
    assert h["x-portcullis-tier"] == "medium", h
    assert h["x-portcullis-route-override"] == "reasoning"
    assert h["x-portcullis-route-policy"] == "capped"
    req = upstream_request(upstream, m)
    assert req["model"] == "tier-medium"
    assert "/max" not in last_user_text(req)
    ids = [x.id for x in capped.models.list().data]
    assert "auto" in ids and "openai:tier-medium" in ids
    assert "openai:tier-reasoning" not in ids and "openai:tier-complex" not in ids, ids


def test_allowed_models_policy_refuses_named_models(gateway):
    c = support.sdk(gateway.base + "/v1", api_key=KEY_OPENAI_MODELS)
    with pytest.raises(openai.PermissionDeniedError) as exc:
        c.chat.completions.create(model="mock:echo", messages=[{"role": "user", "content": "x"}])
    assert support.error_json(exc.value)["error"]["code"] == "model_not_allowed"
    r = c.chat.completions.create(model="openai:gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.content


def test_allowed_models_policy_holds_on_passthrough_routes(gateway, http):
    # The native routes are no way around a model allowlist: the model is read from the body
    # (and from the path for Gemini and Bedrock) and checked like a named model.
    mock_route = support.sdk(gateway.base + "/v1/mock", api_key=KEY_OPENAI_MODELS)
    with pytest.raises(openai.PermissionDeniedError) as exc:
        mock_route.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}])
    assert support.error_json(exc.value)["error"]["code"] == "model_not_allowed"
    native = support.sdk(gateway.base + "/v1/openai", api_key=KEY_OPENAI_MINI)
    with pytest.raises(openai.PermissionDeniedError) as exc:
        native.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert "openai:gpt-4o" in support.error_json(exc.value)["error"]["message"]
    m = marker()
    r = native.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": m}])
    assert m in r.choices[0].message.content
    # A request that names no model needs the whole provider allowed.
    r = http.get("/v1/openai/models", headers=support.auth(KEY_OPENAI_MINI))
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed", r.text
    r = http.get("/v1/openai/models", headers=support.auth(KEY_OPENAI_MODELS))
    assert r.status_code != 403, r.text


def test_models_list_auto_and_tiers(client):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "auto", ids
    for t in TIERS:
        assert f"openai:tier-{t}" in ids, ids


def test_fallback_to_next_candidate(gateway, upstream):
    """`down:dead-model` refuses connections: the same tier's next model answers."""
    c = support.sdk(gateway.base + "/v1/model-router/fallback")
    m = marker()
    raw = c.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": f"/simple hi {m}"}])
    h = raw.headers
    assert raw.parse().choices[0].message.content == f"Mock upstream reply to: hi {m}"
    assert h["x-portcullis-route-fallbacks"] == "1"
    assert h["x-portcullis-provider"] == "openai"
    assert upstream_request(upstream, m)["model"] == "fallback-simple"


def test_responses_api_with_auto(client, upstream):
    m = marker()
    r = client.responses.with_raw_response.create(model="auto", input=f"/complex summarize {m}")
    assert r.headers["x-portcullis-tier"] == "complex"
    assert r.parse().output_text == f"Mock upstream reply to: summarize {m}"
    assert upstream_request(upstream, m)["model"] == "tier-complex"


def test_auto_without_tiers_is_a_clear_400(gateway):
    c = support.sdk(gateway.base + "/v1/model-router/team-a")
    with pytest.raises(openai.BadRequestError) as exc:
        c.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}])
    assert support.error_json(exc.value)["error"]["param"] == "model"


def test_classify_cli_matches_gateway(client, upstream):
    prompts = {"a": "hi there", "b": "Prove that there are infinitely many primes, step by step."}
    lines = "\n".join(json.dumps({"id": k, "prompt": v}) for k, v in prompts.items()) + "\n"
    out = subprocess.run([str(support.gateway_binary()), "classify"], input=lines, capture_output=True, text=True,
                         timeout=30, cwd=support.REPO)
    assert out.returncode == 0, out.stderr
    rows = {r["id"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert set(rows) == {"a", "b"}
    for k, text in prompts.items():
        _, h = ask(client, text)
        assert rows[k]["tier"] == h["x-portcullis-tier"], (rows[k], dict(h))
        assert abs(rows[k]["score"] - float(h["x-portcullis-route-score"])) < 1e-3
