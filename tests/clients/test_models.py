"""GET /v1/models and /v1/model-router/{proxy}/models: only what the caller may use."""

import support
from support import KEY_MOCKONLY

# `auto` may be listed too (SPEC: "plus auto"); nothing else beyond what the key/proxy allows.
OPTIONAL = {"auto"}


def _ids(page):
    return [m.id for m in page.data]


def test_models_all_key(client):
    page = client.models.list()
    ids = _ids(page)
    assert "openai:gpt-4o-mini" in ids, ids
    assert "mock:echo" in ids, ids
    assert "groq:llama-3.1-8b-instant" in ids, ids
    assert len(ids) == len(set(ids)), f"duplicates in {ids}"
    by_id = {m.id: m for m in page.data}
    assert by_id["openai:gpt-4o-mini"].object == "model"
    assert by_id["openai:gpt-4o-mini"].owned_by == "openai"
    assert by_id["mock:echo"].owned_by == "mock"


def test_models_raw_shape(http):
    r = http.get("/v1/models", headers=support.auth())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["object"] == "list"
    for m in body["data"]:
        assert {"id", "object", "owned_by"} <= m.keys(), m
        assert m["object"] == "model"
        assert isinstance(m.get("created", 0), int)


def test_models_limited_key(gateway):
    """Access scoping: nothing from a provider the key may not use."""
    c = support.sdk(gateway.base + "/v1", api_key=KEY_MOCKONLY)
    page = c.models.list()
    assert "mock:echo" in _ids(page)
    foreign = [(m.id, m.owned_by) for m in page.data if m.id not in OPTIONAL and m.owned_by != "mock"]
    assert not foreign, f"pc-test-mockonly may only see mock models, got {foreign}"


def test_model_router_models(gateway):
    """Proxy scoping: team-a lists only its providers (openai, mock)."""
    c = support.sdk(gateway.base + "/v1/model-router/team-a")
    page = c.models.list()
    assert {"openai:gpt-4o-mini", "mock:echo"} <= set(_ids(page))
    foreign = [(m.id, m.owned_by) for m in page.data if m.id not in OPTIONAL and m.owned_by not in ("openai", "mock")]
    assert not foreign, f"proxy team-a allows only openai and mock, but lists {foreign}"


def test_models_lists_provider_model_ids(gateway):
    """SPEC: `/v1/models` lists `provider:model` ids (plus `auto`); with pc-test-mockonly exactly
    `mock:echo`. Aliases such as `echo` are routable but are not listed as separate models."""
    views = {
        "/v1 pc-test-all": support.sdk(gateway.base + "/v1"),
        "/v1 pc-test-mockonly": support.sdk(gateway.base + "/v1", api_key=KEY_MOCKONLY),
        "/v1/model-router/team-a": support.sdk(gateway.base + "/v1/model-router/team-a"),
    }
    bad = {}
    for name, c in views.items():
        ids = _ids(c.models.list())
        odd = [i for i in ids if ":" not in i and i not in OPTIONAL]
        if odd:
            bad[name] = odd
    assert not bad, f"ids that are not provider:model: {bad}"
    mockonly = set(_ids(views["/v1 pc-test-mockonly"].models.list())) - OPTIONAL
    assert mockonly == {"mock:echo"}, mockonly


def test_models_requires_auth(http):
    r = http.get("/v1/models")
    assert r.status_code == 401
    support.assert_error_shape(r.json())
