"""The admin JSON API (/admin/api/...) on the admin listener of a dedicated gateway.

An admin token (its SHA-256 in `admin.tokens_sha256`) creates, lists and revokes stored virtual
keys and OAuth clients; what it creates works on the client listener at once (the memory backend:
one process holds the store); every change is in the audit trail with the acting admin; the API
is not reachable on the client listener. IdP admins (a JWT in an admin group, with MFA) are
tested in test_oidc.py.
"""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

import support

ADMIN_TOKEN = "admin-" + "7" * 40
MSG = [{"role": "user", "content": "hello admin"}]


def render(port: int, admin_port: int, workdir) -> str:
    return f"""# Written by tests/clients/test_admin.py.
{support.server_section(port, admin_port, workdir)}
[audit]
path = "{workdir}/audit.jsonl"

[providers.mock]
kind = "mock"
models = ["echo"]

[providers.openai]                  # never called: only for storing a provider key
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key = "unused"

[groups.eng]

[admin]
tokens_sha256 = ["{support.sha256_hex(ADMIN_TOKEN)}"]

[oauth]
registrations_per_hour = 3
"""


@pytest.fixture(scope="module")
def gw(workdir):
    import conftest

    with conftest.dedicated_gateway("admin", workdir / "admin", render) as g:
        yield g


def api(gw, method: str, path: str, token: str | None = ADMIN_TOKEN, **kw) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, gw.admin + path, headers=headers, timeout=support.TIMEOUT, **kw)


def audit_events(gw) -> list[dict]:
    lines = (gw.dir / "audit.jsonl").read_text().splitlines()
    return [json.loads(line)["record"] for line in lines]


def test_the_admin_api_wants_an_admin_token(gw):
    r = api(gw, "GET", "/admin/api/keys", token=None)
    assert r.status_code == 401, r.text
    support.assert_error_shape(r.json())
    assert api(gw, "GET", "/admin/api/keys", token="admin-wrong").status_code == 401
    assert api(gw, "GET", "/admin/api/keys", token="pc-demo-local-only").status_code == 401


def test_it_is_not_on_the_client_listener(gw):
    r = httpx.get(gw.base + "/admin/api/keys", headers=support.auth(ADMIN_TOKEN), timeout=support.TIMEOUT)
    assert r.status_code == 404, r.text


def test_a_key_created_through_the_api_works_until_revoked(gw):
    name = f"k-{support.marker()}"
    r = api(gw, "POST", "/admin/api/keys", json={"name": name, "providers": ["mock"], "groups": ["eng"]})
    assert r.status_code == 201, r.text
    created = r.json()
    key = created["key"]
    assert key.startswith("pc-") and created["name"] == name
    client = support.sdk(gw.base + "/v1", api_key=key)
    assert client.chat.completions.create(model="mock:echo", messages=MSG).choices[0].message.content
    listed = api(gw, "GET", "/admin/api/keys").json()["data"]
    (entry,) = [k for k in listed if k["name"] == name]
    assert entry["id"] == created["id"] and entry["revoked_at"] is None and entry["groups"] == ["eng"]
    assert key not in json.dumps(listed), "a listing never shows a key"
    r = api(gw, "DELETE", f"/admin/api/keys/{name}")
    assert r.status_code == 200 and r.json()["revoked"] == [created["id"]], r.text
    # Stored-key lookups are cached up to 5 s on a node.
    deadline = time.time() + 7
    while True:
        try:
            client.chat.completions.create(model="mock:echo", messages=MSG)
        except openai.AuthenticationError:
            break
        assert time.time() < deadline, "the revoked key still works"
        time.sleep(0.5)
    assert api(gw, "DELETE", f"/admin/api/keys/{name}").status_code == 404
    events = [e for e in audit_events(gw) if e.get("name") == name or e.get("match") == name]
    assert [e["event"] for e in events] == ["key_created", "key_revoked"], events
    assert all(e["actor"] == "admin-token-0" for e in events)
    assert key not in (gw.dir / "audit.jsonl").read_text()


def test_bad_requests_name_the_problem(gw):
    r = api(gw, "POST", "/admin/api/keys", json={"name": "x", "providers": ["nope"]})
    assert r.status_code == 400 and "nope" in r.json()["error"]["message"], r.text
    r = api(gw, "POST", "/admin/api/keys", json={"name": "x", "providers": ["mock"], "colour": "red"})
    assert r.status_code == 400 and "colour" in r.json()["error"]["message"], r.text
    r = api(gw, "POST", "/admin/api/keys", content=b"{not json")
    assert r.status_code == 400, r.text
    assert api(gw, "PUT", "/admin/api/keys").status_code == 405
    assert api(gw, "GET", "/admin/api/nothing").status_code == 404


def test_a_client_created_through_the_api_gets_tokens(gw):
    name = f"c-{support.marker()}"
    r = api(gw, "POST", "/admin/api/clients", json={"name": name, "providers": ["mock"]})
    assert r.status_code == 201, r.text
    c = r.json()
    assert c["client_id"].startswith("pcc_") and c["client_secret"].startswith("pccs_") and not c["public"]
    tok = httpx.post(
        gw.base + "/api/auth/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=(c["client_id"], c["client_secret"]),
        timeout=support.TIMEOUT,
    )
    assert tok.status_code == 200, tok.text
    access = tok.json()["access_token"]
    client = support.sdk(gw.base + "/v1", api_key=access)
    assert client.chat.completions.create(model="mock:echo", messages=MSG).choices[0].message.content
    listed = api(gw, "GET", "/admin/api/clients").json()["data"]
    assert any(x["client_id"] == c["client_id"] and "client_secret" not in x for x in listed), listed
    assert api(gw, "DELETE", f"/admin/api/clients/{c['client_id']}").status_code == 200
    again = httpx.post(
        gw.base + "/api/auth/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=(c["client_id"], c["client_secret"]),
        timeout=support.TIMEOUT,
    )
    assert again.status_code == 401 and again.json()["error"] == "invalid_client", again.text


def test_the_audit_endpoint_verifies_the_chain(gw):
    api(gw, "POST", "/admin/api/keys", json={"name": f"a-{support.marker()}", "providers": ["mock"]})
    time.sleep(0.3)  # appends run off the request path
    r = api(gw, "GET", "/admin/api/audit")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["enabled"] and body["intact"] and body["records"] >= 1, body


def records(gw, **params) -> httpx.Response:
    return api(gw, "GET", "/admin/api/audit/records", params=params)


def test_audit_records_page_newest_first_and_filter(gw):
    names = [f"rec-{support.marker()}" for _ in range(3)]
    for name in names:
        assert api(gw, "POST", "/admin/api/keys", json={"name": name, "providers": ["mock"]}).status_code == 201
    bad = openai.OpenAI(base_url=gw.base + "/v1", api_key="pc-not-a-key-" + support.marker(), max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="mock:echo", messages=MSG)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # appends run off the request path
        events = audit_events(gw)
        if {e.get("name") for e in events} >= set(names) and events[-1].get("event") == "auth_failed":
            break
        time.sleep(0.05)
    total = len(audit_events(gw))

    # Paging with limit=2 walks the whole trail once, newest first, each line's seal intact.
    seqs, cursor, pages = [], None, 0
    while True:
        r = records(gw, limit=2, **({"cursor": cursor} if cursor else {}))
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["data"]) <= 2 and body["unreadable_lines"] == 0, body
        assert all(e["sealed"] for e in body["data"]), body
        seqs += [e["seq"] for e in body["data"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seqs == list(range(total, 0, -1))[: len(seqs)] and len(seqs) >= total, (seqs, total)
    newest = records(gw, limit=1).json()["data"][0]
    assert newest["record"]["event"] == "auth_failed" and newest["record"]["code"] == "invalid_api_key", newest

    created = records(gw, event="key_created", principal="admin-token-0", limit=500).json()["data"]
    assert all(e["record"]["event"] == "key_created" and e["record"]["actor"] == "admin-token-0" for e in created)
    mine = [e["record"]["name"] for e in created if e["record"].get("name") in names]
    assert mine == names[::-1], mine
    assert records(gw, principal="nobody-" + support.marker()).json()["data"] == []


def test_audit_record_queries_are_checked(gw):
    for params, param in (({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"), ({"limit": "x"}, "limit"),
                          ({"cursor": "-1"}, "cursor"), ({"cursor": str(1 << 62)}, "cursor"),
                          ({"event": "e" * 257}, "event")):
        r = records(gw, **params)
        assert r.status_code == 400, (params, r.text)
        err = r.json()["error"]
        assert err["code"] == "invalid_query" and err["param"] == param, (params, err)
    assert api(gw, "GET", "/admin/api/audit/records", token=None).status_code == 401
    assert api(gw, "POST", "/admin/api/audit/records").status_code == 405


def test_dynamic_registration_is_bounded_per_address(gw):
    meta = {"client_name": "spam", "redirect_uris": ["http://127.0.0.1:7777/cb"], "token_endpoint_auth_method": "none"}
    codes = [httpx.post(gw.base + "/api/auth/oauth2/register", json=meta, timeout=support.TIMEOUT).status_code for _ in range(4)]
    assert codes == [201, 201, 201, 429], codes


def test_storing_a_provider_key_needs_the_secrets_key(gw):
    # This gateway runs without PORTCULLIS_SECRETS_KEY: nothing can be sealed, so nothing is stored.
    r = api(gw, "POST", "/admin/api/provider-keys", json={"name": "k", "provider": "openai", "api_key": "sk-x"})
    assert r.status_code == 409, r.text
    e = support.assert_error_shape(r.json(), 409, code="secrets_key_missing")
    assert "PORTCULLIS_SECRETS_KEY" in e["message"], e
    assert api(gw, "GET", "/admin/api/provider-keys").json()["data"] == []
    r = api(gw, "POST", "/admin/api/provider-keys", json={"name": "k", "provider": "mock", "api_key": "sk-x"})
    assert r.status_code == 400  # the mock takes no key, secrets key or not
