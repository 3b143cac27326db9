"""Named provider keys (`[provider_keys.NAME]`): which upstream key a caller's request carries.

A dedicated gateway routes `openai:` to the shared mock OpenAI upstream, which records every
request's `Authorization` header. Named keys there:
- `batch-openai` mapped to a virtual key, to an OAuth client (client credentials) and to a stored
  key made through the admin API: their requests carry it, never the provider's own key;
- `alice-openai` listing the IdP user `corp:app-es256` (a personal key) and `team-openai` listing
  the group `oidc-team` (a team key): JWT users draw on those; a user with neither is refused;
- `unset-openai` whose env var is not set: 503 naming the variable.
Provider keys stored through the admin API are sealed in the vault (the gateway holds the secrets
key): a stored personal key wins over the team key, a rotation is used at once, a stored key can
be mapped to a stored virtual key, a deletion falls back; every change is audited without the
key, and listings show only its last four characters.
Chat (streamed and not), `auto`, the Responses API and the `/v1/openai/...` pass-through all
honour the mapping; `/v1/models` lists only providers the caller has a key for; the access log
names the key, never the secret.
"""

from __future__ import annotations

import functools
import json
import time

import httpx
import openai
import pytest
from authlib.integrations.httpx_client import OAuth2Client

import support
from idp import Idp

POOL_KEY = support.OPENAI_UPSTREAM_KEY
BATCH_KEY = "sk-named-batch-7f3a"
ALICE_KEY = "sk-named-alice-19c2"
TEAM_KEY = "sk-named-team-55d0"
KEY_MAPPED = "pc-test-pk-mapped"
KEY_POOL = "pc-test-pk-pool"
KEY_NONE = "pc-test-pk-none"
KEY_UNSET = "pc-test-pk-unset"
CLIENT_ID = "pk-batch-client"
CLIENT_SECRET = "pk-batch-secret-" + "3" * 24
ADMIN_TOKEN = "admin-" + "5" * 40
SECRETS_ENV = "PK_TEST_SECRETS_KEY"
SECRETS_KEY = "5e" * 32
VAULT_KEY = "sk-vault-first-8d21"
VAULT_KEY_2 = "sk-vault-rotated-c4e7"
OWN_KEY = "sk-personal-own-6b1e"
OWN_KEY_2 = "sk-personal-rotated-0aa9"


def render_config(upstream_port: int, idp_port: int):
    def render(port: int, admin_port: int, workdir) -> str:
        return f"""# Written by tests/clients/test_provider_keys.py.
{support.server_section(port, admin_port, workdir)}
[egress]
allow_hosts = ["127.0.0.1", "localhost"]

[providers.openai]
kind = "openai"
base_url = "http://127.0.0.1:{upstream_port}/v1"
api_key = "{POOL_KEY}"
models = ["gpt-4o-mini"]
personal_keys = true                 # IdP users may store their own key (PUT /v1/provider-keys/openai)

[providers.spare]                    # a second OpenAI account, for the provider-change check
kind = "openai"
base_url = "http://127.0.0.1:{upstream_port}/v1"

[providers.mock]
kind = "mock"
models = ["echo"]

[routing.tiers]
simple = ["openai:gpt-4o-mini"]
medium = ["openai:gpt-4o-mini"]
complex = ["openai:gpt-4o-mini"]
reasoning = ["openai:gpt-4o-mini"]

[groups.oidc-team]
[groups.oidc-limited]

[provider_keys.batch-openai]
provider = "openai"
api_key = "{BATCH_KEY}"

[provider_keys.alice-openai]
provider = "openai"
api_key = "{ALICE_KEY}"
users = ["corp:app-es256"]

[provider_keys.team-openai]
provider = "openai"
api_key = "{TEAM_KEY}"
groups = ["oidc-team"]

[provider_keys.unset-openai]
provider = "openai"
api_key_env = "PORTCULLIS_TEST_UNSET_OPENAI_KEY"

[[auth.virtual_keys]]
name = "mapped"
key_sha256 = "{support.sha256_hex(KEY_MAPPED)}"
providers = ["mock"]
provider_keys = ["batch-openai"]

[[auth.virtual_keys]]
name = "pool"
key_sha256 = "{support.sha256_hex(KEY_POOL)}"
providers = ["openai"]

[[auth.virtual_keys]]
name = "none"
key_sha256 = "{support.sha256_hex(KEY_NONE)}"
providers = ["mock"]
groups = ["oidc-team"]

[[auth.virtual_keys]]
name = "unset"
key_sha256 = "{support.sha256_hex(KEY_UNSET)}"
provider_keys = ["unset-openai"]

[[auth.oauth_clients]]
name = "batch"
client_id = "{CLIENT_ID}"
client_secret_sha256 = "{support.sha256_hex(CLIENT_SECRET)}"
provider_keys = ["batch-openai"]

[[auth.oidc]]
name = "corp"
issuer = "http://127.0.0.1:{idp_port}"
audiences = ["portcullis"]
algorithms = ["RS256", "ES256"]
providers = ["mock"]
groups_claim = "groups"

[admin]
tokens_sha256 = ["{support.sha256_hex(ADMIN_TOKEN)}"]

[secrets]
key_env = "{SECRETS_ENV}"

[audit]
path = "{workdir}/audit.jsonl"
"""

    return render


@pytest.fixture(scope="module")
def idp(workdir):
    i = Idp(workdir / "pk-idp", name="pk-idp").start()
    yield i
    i.stop()


@pytest.fixture(scope="module")
def gw(upstream, idp, workdir):
    import conftest

    with conftest.dedicated_gateway("provider-keys", workdir / "provider-keys", render_config(upstream.port, idp.port), env={SECRETS_ENV: SECRETS_KEY}) as g:
        yield g


def chat(gw, token: str, model: str = "openai:gpt-4o-mini", stream: bool = False) -> str:
    """Send a marked chat; return the marker."""
    m = support.marker()
    client = support.sdk(gw.base + "/v1", api_key=token)
    msgs = [{"role": "user", "content": f"which key {m}"}]
    if stream:
        text = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(model=model, messages=msgs, stream=True)
            if c.choices
        )
    else:
        text = client.chat.completions.create(model=model, messages=msgs).choices[0].message.content
    assert m in text, text
    return m


def upstream_key(upstream, m: str) -> str:
    auth = upstream.find(m).header("authorization") or ""
    assert auth.startswith("Bearer "), auth
    return auth.removeprefix("Bearer ")


def client_token(gw) -> str:
    with OAuth2Client(CLIENT_ID, CLIENT_SECRET, timeout=support.TIMEOUT) as o:
        tok = o.fetch_token(gw.base + "/api/auth/oauth2/token", grant_type="client_credentials", scope="llm:proxy")
    return tok["access_token"]


def forbidden(gw, token: str, model: str = "openai:gpt-4o-mini") -> dict:
    with pytest.raises(openai.PermissionDeniedError) as info:
        chat(gw, token, model)
    return support.assert_error_shape(support.error_json(info.value), 403, code="provider_not_allowed")


def model_ids(gw, token: str) -> set:
    return {m.id for m in support.sdk(gw.base + "/v1", api_key=token).models.list()}


@pytest.mark.parametrize("stream", [False, True])
def test_a_virtual_key_calls_with_its_mapped_key(gw, upstream, stream):
    assert upstream_key(upstream, chat(gw, KEY_MAPPED, stream=stream)) == BATCH_KEY
    # A key listing the provider itself draws on the provider's own key.
    assert upstream_key(upstream, chat(gw, KEY_POOL, stream=stream)) == POOL_KEY


def test_auto_and_the_responses_api_use_the_mapped_key(gw, upstream):
    assert upstream_key(upstream, chat(gw, KEY_MAPPED, model="auto")) == BATCH_KEY
    m = support.marker()
    r = support.sdk(gw.base + "/v1", api_key=KEY_MAPPED).responses.create(model="openai:gpt-4o-mini", input=f"which key {m}")
    assert r.status == "completed" and m in r.output_text, r
    assert upstream.find(m).path.endswith("/v1/responses")
    assert upstream_key(upstream, m) == BATCH_KEY


def test_the_pass_through_route_uses_the_mapped_key(gw, upstream):
    m = support.marker()
    r = httpx.post(
        gw.base + "/v1/openai/chat/completions",
        headers=support.auth(KEY_MAPPED),
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"which key {m}"}]},
        timeout=support.TIMEOUT,
    )
    assert r.status_code == 200, r.text
    assert upstream_key(upstream, m) == BATCH_KEY


def test_a_credential_without_a_key_for_the_provider_is_refused(gw, upstream):
    before = len(upstream.requests)
    e = forbidden(gw, KEY_NONE)
    assert "openai" in e["message"], e
    # A virtual key in oidc-team does not inherit the team's key: group keys are for users.
    assert len(upstream.requests) == before
    assert "openai:gpt-4o-mini" not in model_ids(gw, KEY_NONE)
    assert "openai:gpt-4o-mini" in model_ids(gw, KEY_MAPPED)
    # The mapping grants that provider, and the key's own `providers` still apply.
    assert chat(gw, KEY_MAPPED, model="mock:echo")


def test_an_oauth_client_calls_with_its_provider_key_mapping(gw, upstream):
    token = client_token(gw)
    assert upstream_key(upstream, chat(gw, token)) == BATCH_KEY
    assert "openai:gpt-4o-mini" in model_ids(gw, token)
    # Its mapping is all it has: no `providers`, so not the mock either.
    with pytest.raises(openai.PermissionDeniedError):
        chat(gw, token, model="mock:echo")


def test_idp_users_draw_on_their_own_key_then_their_groups_key(gw, upstream, idp):
    personal = idp.token("app-es256")  # corp:app-es256, listed by alice-openai
    assert upstream_key(upstream, chat(gw, personal)) == ALICE_KEY
    team = idp.token("app-mfa")  # groups: oidc-team
    assert upstream_key(upstream, chat(gw, team, stream=True)) == TEAM_KEY
    assert "openai:gpt-4o-mini" in model_ids(gw, team)
    # In neither list, and the IdP's own `providers` has only the mock.
    outsider = idp.token("app-limited")
    forbidden(gw, outsider)
    assert "openai:gpt-4o-mini" not in model_ids(gw, outsider)


def admin(gw, method, path, **kw):
    return httpx.request(method, gw.admin + path, headers=support.auth(ADMIN_TOKEN), timeout=support.TIMEOUT, **kw)


def test_a_stored_key_made_through_the_admin_api_carries_its_mapping(gw, upstream):
    api = functools.partial(admin, gw)
    r = api("POST", "/admin/api/keys", json={"name": "stored-batch", "provider_keys": ["batch-openai"]})
    assert r.status_code == 201, r.text
    key = r.json()["key"]
    assert upstream_key(upstream, chat(gw, key)) == BATCH_KEY
    listed = [k for k in api("GET", "/admin/api/keys").json()["data"] if k["name"] == "stored-batch"]
    assert listed and listed[0]["provider_keys"] == ["batch-openai"], listed
    for body, needle in [
        ({"name": "x", "provider_keys": ["nope"]}, "unknown provider key `nope`"),
        ({"name": "x", "provider_keys": ["batch-openai", "team-openai"]}, "two keys for provider `openai`"),
        ({"name": "x"}, "`providers` or `provider_keys`"),
    ]:
        r = api("POST", "/admin/api/keys", json=body)
        assert r.status_code == 400, r.text
        assert needle in support.assert_error_shape(r.json(), 400)["message"], r.text


def test_a_named_key_without_its_secret_is_a_clear_503(gw, upstream):
    before = len(upstream.requests)
    with pytest.raises(openai.InternalServerError) as info:
        chat(gw, KEY_UNSET)
    e = support.assert_error_shape(support.error_json(info.value), 503, code="provider_not_configured")
    assert "unset-openai" in e["message"] and "PORTCULLIS_TEST_UNSET_OPENAI_KEY" in e["message"], e
    assert len(upstream.requests) == before


def test_the_access_log_names_the_key_never_its_secret(gw, upstream):
    m = support.marker()
    raw = support.sdk(gw.base + "/v1", api_key=KEY_MAPPED).chat.completions.with_raw_response.create(
        model="openai:gpt-4o-mini", messages=[{"role": "user", "content": f"which key {m}"}]
    )
    rid = raw.headers["x-request-id"]
    rows = []
    for _ in range(50):  # the access log is written when the request ends
        rows = [json.loads(line[line.index("{"):]) for line in gw.log_text().splitlines() if rid in line and "{" in line]
        if rows:
            break
        time.sleep(0.05)
    assert len(rows) == 1, rows
    assert rows[0]["provider_key"] == "batch-openai" and rows[0]["principal"] == "mapped", rows
    text = gw.log_text()
    for secret in (BATCH_KEY, ALICE_KEY, TEAM_KEY, POOL_KEY):
        assert secret not in text


def test_provider_keys_stored_in_the_vault(gw, upstream, idp):
    api = functools.partial(admin, gw)
    user = idp.token("app-nomfa")  # corp:app-nomfa, in oidc-team
    assert upstream_key(upstream, chat(gw, user)) == TEAM_KEY
    body = {"name": "vault-openai", "provider": "openai", "api_key": VAULT_KEY, "users": ["corp:app-nomfa"]}
    r = api("POST", "/admin/api/provider-keys", json=body)
    assert r.status_code == 201 and r.json()["replaced"] is False, r.text
    # This node uses it at once; a personal key wins over the team's.
    assert upstream_key(upstream, chat(gw, user)) == VAULT_KEY
    listed = {k["name"]: k for k in api("GET", "/admin/api/provider-keys").json()["data"]}
    assert listed["vault-openai"]["hint"] == "…" + VAULT_KEY[-4:] and listed["vault-openai"]["source"] == "stored"
    assert listed["batch-openai"]["source"] == "config", listed
    assert VAULT_KEY not in json.dumps(listed) and BATCH_KEY not in json.dumps(listed)

    # Rotation: same name, new key, used on the next request; `users` left out stay as they were.
    r = api("POST", "/admin/api/provider-keys", json={"name": "vault-openai", "provider": "openai", "api_key": VAULT_KEY_2})
    assert r.status_code == 200 and r.json()["replaced"] is True, r.text
    assert upstream_key(upstream, chat(gw, user, stream=True)) == VAULT_KEY_2
    # The name stays bound to its provider: credentials mapped to it must not reach another one.
    r = api("POST", "/admin/api/provider-keys", json={"name": "vault-openai", "provider": "spare", "api_key": "sk-x"})
    assert r.status_code == 409, r.text
    assert "delete it first" in support.assert_error_shape(r.json(), 409, code="provider_key_conflict")["message"]

    # A stored virtual key may map a stored provider key.
    r = api("POST", "/admin/api/keys", json={"name": "vault-mapped", "provider_keys": ["vault-openai"]})
    assert r.status_code == 201, r.text
    assert upstream_key(upstream, chat(gw, r.json()["key"])) == VAULT_KEY_2

    r = api("DELETE", "/admin/api/provider-keys/vault-openai")
    assert r.status_code == 200 and r.json() == {"deleted": "vault-openai"}, r.text
    assert upstream_key(upstream, chat(gw, user)) == TEAM_KEY
    assert api("DELETE", "/admin/api/provider-keys/vault-openai").status_code == 404

    events = [json.loads(line)["record"] for line in (gw.dir / "audit.jsonl").read_text().splitlines()]
    changes = [(e["event"], e.get("name")) for e in events if e["event"].startswith("provider_key_")]
    assert changes == [
        ("provider_key_created", "vault-openai"),
        ("provider_key_rotated", "vault-openai"),
        ("provider_key_deleted", "vault-openai"),
    ], changes
    trail = (gw.dir / "audit.jsonl").read_text()
    assert VAULT_KEY not in trail and VAULT_KEY_2 not in trail and VAULT_KEY not in gw.log_text()


@pytest.mark.parametrize(
    "body, needle",
    [
        ({"provider": "nowhere", "api_key": "sk-x"}, "unknown provider `nowhere`"),
        ({"provider": "mock", "api_key": "sk-x"}, "the mock provider takes no key"),
        ({"name": "batch-openai", "provider": "openai", "api_key": "sk-x"}, "provider key of the config file"),
        ({"provider": "openai", "api_key": "sk with spaces"}, "printable ASCII"),
        ({"provider": "openai", "api_key": "sk-x", "users": ["alice"]}, "`alice` must be `idp-name:user`"),
        ({"provider": "openai", "api_key": "sk-x", "groups": ["nobody"]}, "unknown group `nobody`"),
        ({"name": "Bad Name", "provider": "openai", "api_key": "sk-x"}, "names are 1 to 64"),
    ],
)
def test_a_bad_stored_provider_key_is_a_clear_400(gw, body, needle):
    r = admin(gw, "POST", "/admin/api/provider-keys", json={"name": "fresh", **body})
    assert r.status_code == 400, r.text
    assert needle in support.assert_error_shape(r.json(), 400)["message"], r.text


def own_keys(gw, token: str | None, method: str = "GET", provider: str | None = None, **kw) -> httpx.Response:
    path = "/v1/provider-keys" + (f"/{provider}" if provider else "")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, gw.base + path, headers=headers, timeout=support.TIMEOUT, **kw)


def test_a_user_stores_their_own_key_and_only_their_requests_spend_it(gw, upstream, idp):
    user, teammate = idp.token("app-mfa"), idp.token("app-nomfa")  # both in oidc-team
    assert upstream_key(upstream, chat(gw, user)) == TEAM_KEY
    r = own_keys(gw, user, "PUT", "openai", json={"api_key": OWN_KEY})
    assert r.status_code == 201, r.text
    assert r.json() == {"provider": "openai", "hint": "…" + OWN_KEY[-4:], "replaced": False}, r.text
    assert upstream_key(upstream, chat(gw, user, stream=True)) == OWN_KEY
    assert upstream_key(upstream, chat(gw, user, model="auto")) == OWN_KEY
    assert upstream_key(upstream, chat(gw, teammate)) == TEAM_KEY, "a teammate spent someone's own key"

    listed = own_keys(gw, user).json()
    assert [(k["provider"], k["hint"]) for k in listed["data"]] == [("openai", "…" + OWN_KEY[-4:])], listed
    assert listed["providers_accepting_personal_keys"] == ["openai"], listed
    assert own_keys(gw, teammate).json()["data"] == []
    admin_view = [k for k in admin(gw, "GET", "/admin/api/provider-keys").json()["data"] if k["users"] == ["corp:app-mfa"]]
    assert len(admin_view) == 1 and admin_view[0]["name"].startswith("personal-"), admin_view
    assert "app-mfa" not in admin_view[0]["name"], "a user name in a key name"

    r = own_keys(gw, user, "PUT", "openai", json={"api_key": OWN_KEY_2})
    assert r.status_code == 200 and r.json()["replaced"] is True, r.text
    assert upstream_key(upstream, chat(gw, user)) == OWN_KEY_2
    r = own_keys(gw, user, "DELETE", "openai")
    assert r.status_code == 200 and r.json() == {"provider": "openai", "deleted": True}, r.text
    assert upstream_key(upstream, chat(gw, user)) == TEAM_KEY
    assert own_keys(gw, user, "DELETE", "openai").status_code == 404

    deadline = time.monotonic() + 3  # audit appends run off the request path
    while True:
        events = [json.loads(line)["record"] for line in (gw.dir / "audit.jsonl").read_text().splitlines()]
        mine = [(e["event"], e.get("principal")) for e in events if e.get("personal")]
        if len(mine) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert mine == [(e, "corp:app-mfa") for e in ("provider_key_created", "provider_key_rotated", "provider_key_deleted")], mine
    for secret in (OWN_KEY, OWN_KEY_2):
        assert secret not in (gw.dir / "audit.jsonl").read_text() and secret not in gw.log_text()


def test_personal_keys_are_refused_where_they_do_not_belong(gw, idp):
    user = idp.token("app-mfa")
    r = own_keys(gw, user, "PUT", "spare", json={"api_key": "sk-x"})
    assert r.status_code == 403, r.text
    support.assert_error_shape(r.json(), 403, code="personal_keys_not_allowed")
    assert own_keys(gw, user, "PUT", "nowhere", json={"api_key": "sk-x"}).status_code == 404
    for token in (KEY_POOL, client_token(gw)):
        r = own_keys(gw, token)
        assert r.status_code == 403, r.text
        support.assert_error_shape(r.json(), 403, code="personal_keys_users_only")
        assert own_keys(gw, token, "PUT", "openai", json={"api_key": "sk-x"}).status_code == 403
    assert own_keys(gw, None).status_code == 401
    for body in ({"api_key": "sk with spaces"}, {"key": "sk-x"}, {"api_key": ""}):
        r = own_keys(gw, user, "PUT", "openai", json=body)
        assert r.status_code == 400, (body, r.text)
        assert support.assert_error_shape(r.json(), 400)["param"] == "api_key", r.text
    r = own_keys(gw, user, "PUT", "openai", content=b"not json")
    assert r.status_code == 400, r.text
    # A bare string is the key itself: the error must not quote it back (nor log it).
    r = own_keys(gw, user, "PUT", "openai", json="sk-proj-bare-leak-7c1d")
    assert r.status_code == 400 and "sk-proj-bare-leak" not in r.text, r.text
    assert "sk-proj-bare-leak" not in gw.log_text()
    assert own_keys(gw, user, "GET", "openai").status_code == 405
    assert own_keys(gw, user, "PUT", "openai", content=b"x" * (64 * 1024)).status_code == 413
    assert own_keys(gw, user).json()["data"] == [], "a refused request stored a key"
    r = admin(gw, "POST", "/admin/api/provider-keys", json={"name": "personal-0123", "provider": "openai", "api_key": "sk-x"})
    assert r.status_code == 400 and "users' own keys" in r.text, r.text


def test_changes_to_personal_keys_are_bounded_per_user(gw, upstream, idp):
    user = idp.token("app-es256")  # no personal key of its own in this module
    codes = [own_keys(gw, user, "DELETE", "openai").status_code for _ in range(30)]
    assert codes == [404] * 30, codes
    r = own_keys(gw, user, "PUT", "openai", json={"api_key": "sk-x"})
    assert r.status_code == 429 and r.headers.get("retry-after"), r.text
    support.assert_error_shape(r.json(), 429, code="rate_limit_exceeded")
    assert own_keys(gw, user).status_code == 200, "listing is not a change"
    assert upstream_key(upstream, chat(gw, user)) == ALICE_KEY, "nothing was stored"
    assert own_keys(gw, idp.token("app-mfa"), "DELETE", "openai").status_code == 404, "another user is not limited"
