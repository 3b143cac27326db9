"""The admin's overrides layer (/admin/api/policies/...), applied live, on a dedicated gateway.

A group override replaces the group's policy from the file (an intern's `/max` is capped to
SIMPLE while it stands), a principal override narrows one credential's models, a proxy's tier map
override reroutes `auto`; removing each restores the file's behaviour at once. Bad overrides are
400, unknown scopes 404; every change is in the audit trail with the acting admin. The providers
and the egress allow-list are listed read-only, without keys.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

import support

ADMIN_TOKEN = "admin-" + "9" * 40
KEY_INTERN = "pc-test-ov-intern"
KEY_DEV = "pc-test-ov-dev"


def render(port: int, admin_port: int, workdir) -> str:
    return f"""# Written by tests/clients/test_overrides.py.
{support.server_section(port, admin_port, workdir)}
[audit]
path = "{workdir}/audit.jsonl"

[providers.mock]
kind = "mock"
models = ["echo"]
api_key = "sk-never-listed-1234"

[pricing]
"mock:*" = {{ input = 1.0, output = 2.0 }}

[routing.tiers]
simple = ["mock:small"]
medium = ["mock:mid"]
complex = ["mock:big"]
reasoning = ["mock:think"]

[groups.interns]

[[auth.virtual_keys]]
name = "intern"
key_sha256 = "{support.sha256_hex(KEY_INTERN)}"
providers = ["mock"]
groups = ["interns"]

[[auth.virtual_keys]]
name = "dev"
key_sha256 = "{support.sha256_hex(KEY_DEV)}"
providers = ["mock"]

[admin]
tokens_sha256 = ["{support.sha256_hex(ADMIN_TOKEN)}"]
"""


@pytest.fixture(scope="module")
def gw(workdir):
    import conftest

    with conftest.dedicated_gateway("overrides", workdir / "overrides", render) as g:
        yield g


def api(gw, method: str, path: str, **kw) -> httpx.Response:
    return httpx.request(method, gw.admin + path, headers=support.auth(ADMIN_TOKEN), timeout=support.TIMEOUT, **kw)


def routed(gw, key: str, text: str, model: str = "auto") -> httpx.Headers:
    raw = support.sdk(gw.base + "/v1", api_key=key).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text}]
    )
    return raw.headers


def test_a_group_override_caps_its_members_live(gw):
    assert routed(gw, KEY_INTERN, "/max prove it")["x-portcullis-tier"] == "reasoning"
    r = api(gw, "PUT", "/admin/api/policies/groups/interns", json={"max_tier": "simple"})
    assert r.status_code == 201, r.text
    h = routed(gw, KEY_INTERN, "/max prove it")
    assert h["x-portcullis-tier"] == "simple" and h["x-portcullis-route-policy"] == "capped", h
    assert routed(gw, KEY_DEV, "/max prove it")["x-portcullis-tier"] == "reasoning", "not in the group"
    listed = api(gw, "GET", "/admin/api/policies").json()
    assert listed["groups"]["interns"]["override"]["value"] == {"max_tier": "simple"}, listed
    assert listed["groups"]["interns"]["override"]["updated_by"] == "admin-token-0", listed
    assert api(gw, "PUT", "/admin/api/policies/groups/interns", json={"max_tier": "medium"}).status_code == 200
    assert routed(gw, KEY_INTERN, "/max prove it")["x-portcullis-tier"] == "medium"
    assert api(gw, "DELETE", "/admin/api/policies/groups/interns").status_code == 200
    assert routed(gw, KEY_INTERN, "/max prove it")["x-portcullis-tier"] == "reasoning"
    assert api(gw, "DELETE", "/admin/api/policies/groups/interns").status_code == 404


def test_a_principal_override_narrows_one_credentials_models(gw):
    r = api(gw, "PUT", "/admin/api/policies/principals/dev", json={"allowed_models": ["mock:echo"]})
    assert r.status_code == 201, r.text
    assert routed(gw, KEY_DEV, "hi", model="mock:echo")["x-portcullis-provider"] == "mock"
    with pytest.raises(openai.PermissionDeniedError) as info:
        routed(gw, KEY_DEV, "hi", model="mock:other")
    support.assert_error_shape(support.error_json(info.value), 403, code="model_not_allowed")
    assert routed(gw, KEY_INTERN, "hi", model="mock:other")["x-portcullis-provider"] == "mock", "another principal"
    assert api(gw, "DELETE", "/admin/api/policies/principals/dev").status_code == 200
    assert routed(gw, KEY_DEV, "hi", model="mock:other")["x-portcullis-provider"] == "mock"


def test_a_tier_map_override_reroutes_auto(gw):
    tiers = {"simple": ["mock:small"], "medium": ["mock:mid"], "complex": ["mock:big"], "reasoning": ["mock:deeper"]}
    assert api(gw, "PUT", "/admin/api/policies/tiers/default", json=tiers).status_code == 201
    assert routed(gw, KEY_DEV, "/max prove it")["x-portcullis-model"] == "deeper"
    ids = {m.id for m in support.sdk(gw.base + "/v1", api_key=KEY_DEV).models.list()}
    assert "mock:deeper" in ids and "mock:think" not in ids, ids
    assert api(gw, "DELETE", "/admin/api/policies/tiers/default").status_code == 200
    assert routed(gw, KEY_DEV, "/max prove it")["x-portcullis-model"] == "think"


@pytest.mark.parametrize(
    "path, body, status, needle",
    [
        ("/admin/api/policies/groups/nobody", {}, 400, "unknown group `nobody`"),
        ("/admin/api/policies/tiers/nowhere", {}, 400, "unknown proxy `nowhere`"),
        ("/admin/api/policies/groups/interns", {"max_tier": "galactic"}, 400, "not a policy"),
        ("/admin/api/policies/groups/interns", {"allowed_models": ["openai:*"]}, 400, "configured provider"),
        ("/admin/api/policies/tiers/default", {"simple": ["gpt-4o"]}, 400, "simple: `gpt-4o`"),
        ("/admin/api/policies/everything/x", {}, 404, "no override scope"),
    ],
)
def test_bad_overrides_are_refused(gw, path, body, status, needle):
    r = api(gw, "PUT", path, json=body)
    assert r.status_code == status, r.text
    assert needle in support.assert_error_shape(r.json(), status)["message"], r.text


def test_overrides_are_audited_and_providers_are_listed_read_only(gw):
    assert api(gw, "PUT", "/admin/api/policies/principals/intern", json={"max_tier": "complex"}).status_code == 201
    assert api(gw, "DELETE", "/admin/api/policies/principals/intern").status_code == 200
    events = [json.loads(line)["record"] for line in (gw.dir / "audit.jsonl").read_text().splitlines()]
    mine = [e for e in events if e["event"].startswith("policy_override") and e.get("name") == "intern"]
    assert [(e["event"], e["scope"], e["actor"]) for e in mine] == [
        ("policy_override_set", "principals", "admin-token-0"),
        ("policy_override_removed", "principals", "admin-token-0"),
    ], mine
    assert mine[0]["value"] == {"max_tier": "complex"}
    view = api(gw, "GET", "/admin/api/providers")
    assert view.status_code == 200, view.text
    (mock,) = [p for p in view.json()["providers"] if p["name"] == "mock"]
    assert mock["kind"] == "mock" and mock["models"] == ["echo"], mock
    assert "sk-never-listed" not in view.text
    assert api(gw, "POST", "/admin/api/providers").status_code == 405


def test_usage_per_principal_model_and_day(gw):
    before = {(r["principal"], r["model"]): r for r in api(gw, "GET", "/admin/api/usage").json()["data"]}
    for _ in range(3):
        routed(gw, KEY_INTERN, "count me", model="mock:tally")
    routed(gw, KEY_DEV, "count me too", model="mock:tally")
    r = api(gw, "GET", "/admin/api/usage?days=1")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["days"] == 1
    rows = {(x["principal"], x["model"]): x for x in body["data"]}
    intern, dev = rows[("intern", "mock:tally")], rows[("dev", "mock:tally")]
    assert ("intern", "mock:tally") not in before
    assert intern["requests"] == 3 and dev["requests"] == 1, rows
    assert intern["input_tokens"] > 0 and intern["output_tokens"] > 0 and intern["cost_usd"] > dev["cost_usd"] > 0, rows
    assert intern["scope"] == "key" and len(intern["day"]) == 10, intern
    for bad in ("0", "32", "x"):
        r = api(gw, "GET", f"/admin/api/usage?days={bad}")
        assert r.status_code == 400, r.text
