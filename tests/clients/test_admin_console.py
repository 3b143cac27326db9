"""The admin web console (/admin on the admin listener): OpenID Connect sign-in, then HTML forms.

One IdP (tests/idp/server.mjs: users sign in through the confidential client `portcullis-login`,
whose redirect URI is the console's callback) and one gateway (memory backend, `[oauth]
login_idp = "corp"`, `[admin] groups = ["oidc-team"]` with MFA) for the module. A browser-less
user agent (idp.Browser, a cookie jar, redirects followed by hand) walks GET /admin through the
IdP's login form to the callback; the console's forms are parsed (idp.html_forms) and posted as
a browser would post them. What the console creates is used for real: keys with the official
`openai` SDK on /v1, clients at the token endpoint. Every change must be in the audit trail
with the signed-in admin, and no secret ever is.

alice is in `oidc-team` (an admin, when she signs in with MFA); bob is in no group.
"""

from __future__ import annotations

import contextlib
import html
import json
import re
import secrets
import time
import urllib.parse

import httpx
import openai
import pytest

import support
from idp import LOGIN_CLIENT_ID, LOGIN_CLIENT_SECRET, Browser, Idp, html_forms, parse_redirect

CALLBACK = "/admin/callback"
COOKIE = "pc_admin_session"
ACTOR = "corp:alice"
MSG = [{"role": "user", "content": "hello console"}]
APP_REDIRECT = "http://127.0.0.1:7777/cb"
APP_REDIRECT_2 = "http://127.0.0.1:7777/other-cb"
REVOKE_WITHIN = 6.0  # stored-key and client lookups are cached up to 5 s
AUDIT_WITHIN = 3.0  # audit appends run off the request path
CHANGES = ("key_created", "key_revoked", "client_created", "client_revoked")  # the console's audit events


def render_config(idp_port: int):
    def render(port: int, admin_port: int, workdir) -> str:
        return f"""# Written by tests/clients/test_admin_console.py.
{support.server_section(port, admin_port, workdir)}
[audit]
path = "{workdir}/audit.jsonl"

[egress]
allow_hosts = ["127.0.0.1", "localhost"]

[providers.mock]
kind = "mock"
models = ["echo"]

[providers.openai]                  # never called: provider keys are stored for it
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key = "unused"

[oauth]
login_idp = "corp"

[[auth.oidc]]
name = "corp"
issuer = "http://127.0.0.1:{idp_port}"
audiences = ["portcullis"]
login_client_id = "{LOGIN_CLIENT_ID}"
login_client_secret = "{LOGIN_CLIENT_SECRET}"
providers = ["mock"]
groups_claim = "groups"

[groups.oidc-team]

[admin]
groups = ["oidc-team"]        # alice is in oidc-team; bob is in no group
require_mfa = true
"""

    return render


# -- processes ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def idp_port():
    return support.free_port()


@pytest.fixture(scope="module")
def _gateway(idp_port, workdir):
    """Started before the IdP (which must know the console's callback URL, and so the admin
    port): the gateway fetches the IdP's discovery document lazily, at the first sign-in."""
    import conftest

    with conftest.dedicated_gateway("console", workdir / "console", render_config(idp_port), env={"PORTCULLIS_SECRETS_KEY": "cd" * 32}) as g:
        yield g


@pytest.fixture(scope="module")
def idp(_gateway, idp_port, workdir):
    i = Idp(workdir / "console-idp", name="console-idp").start(port=idp_port, rp_redirects=[_gateway.admin + CALLBACK])
    yield i
    i.stop()


@pytest.fixture(scope="module")
def gw(_gateway, idp):
    """The gateway, with its login IdP running."""
    return _gateway


@pytest.fixture(scope="module")
def alice(gw):
    """A browser signed in to the console as alice (with MFA), for the whole module."""
    b = admin_browser(gw)
    yield b
    b.close()


# -- helpers ------------------------------------------------------------------------------------


def url(gw, path: str) -> str:
    return gw.admin + path


def is_html(r: httpx.Response) -> bool:
    return r.headers.get("content-type", "").split(";")[0].strip().lower() == "text/html"


def location(r: httpx.Response) -> str:
    """The redirect's target, absolute."""
    loc = r.headers.get("location")
    assert loc, f"not a redirect: {r.status_code} {r.headers} {r.text[:500]!r}"
    return urllib.parse.urljoin(str(r.url), loc)


def assert_redirects_to_console(gw, r: httpx.Response, status: int | tuple[int, ...] = 303):
    statuses = (status,) if isinstance(status, int) else status
    assert r.status_code in statuses, f"expected {statuses} to /admin, got {r.status_code} {r.headers} {r.text[:500]!r}"
    assert location(r) == url(gw, "/admin"), f"Location: {r.headers.get('location')!r}"


def assert_page_headers(r: httpx.Response):
    """Console pages can be neither framed nor cached."""
    csp = r.headers.get("content-security-policy", "")
    assert "frame-ancestors 'none'" in csp, f"Content-Security-Policy: {csp!r} on {r.request.method} {r.request.url}"
    assert "no-store" in r.headers.get("cache-control", ""), f"Cache-Control: {r.headers.get('cache-control')!r} on {r.request.method} {r.request.url}"


def session_cookie(r: httpx.Response) -> str | None:
    """The `Set-Cookie: pc_admin_session=...` header of `r` (the whole header), if any."""
    for h in r.headers.get_list("set-cookie"):
        if h.split("=", 1)[0].strip() == COOKIE:
            return h
    return None


def cookie_attrs(header: str) -> tuple[str, dict[str, str]]:
    """(value, {attribute lowercased: value}) of a Set-Cookie header."""
    first, *rest = [p.strip() for p in header.split(";")]
    value = first.split("=", 1)[1]
    attrs = {}
    for p in rest:
        k, _, v = p.partition("=")
        attrs[k.strip().lower()] = v.strip()
    return value, attrs


def to_callback(gw, b: Browser, login: str = "alice", mfa: bool = True) -> httpx.Response:
    """GET /admin and sign in at the IdP; returns the IdP's redirect to the console's callback
    (not fetched)."""
    r = b.authorize(url(gw, "/admin"), login=login, mfa=mfa, stop_at=url(gw, CALLBACK))
    assert r.status_code in (302, 303) and location(r).startswith(url(gw, CALLBACK) + "?"), (
        f"expected the IdP's redirect to the console's callback, got {r.status_code} {r.headers.get('location')!r} "
        f"{r.text[:500]!r}\n{b.trail()}"
    )
    params = parse_redirect(r)
    assert params.get("code") and params.get("state"), params
    return r


def sign_in(gw, login: str = "alice", mfa: bool = True) -> tuple[Browser, httpx.Response]:
    """A fresh browser through the IdP's sign-in and the console's callback: (browser, the
    callback's answer)."""
    b = Browser()
    try:
        r = to_callback(gw, b, login, mfa)
        cb = b.get(location(r))
        b.history.append(("GET", str(cb.url), cb.status_code))
    except BaseException:
        b.close()
        raise
    return b, cb


def session_cookie_value(b: Browser) -> str:
    for c in b.cookies.jar:
        if c.name == COOKIE and c.value:
            return c.value
    raise AssertionError(f"no {COOKIE} cookie in the browser: {[c.name for c in b.cookies.jar]}")


def assert_no_session(r: httpx.Response, what: str):
    """`r` refused to sign anyone in: a 4xx (or a redirect to start over) without a session cookie
    (one that clears it is fine)."""
    assert 400 <= r.status_code < 500 or r.status_code in (302, 303), f"{what}: {r.status_code} {r.headers} {r.text[:300]!r}"
    header = session_cookie(r)
    if header:
        value, attrs = cookie_attrs(header)
        assert not value or attrs.get("max-age") == "0", f"{what} set a session cookie: {header!r}"


def admin_browser(gw) -> Browser:
    """alice, signed in with MFA: the callback answered 303 to /admin with the session cookie."""
    b, cb = sign_in(gw)
    assert_redirects_to_console(gw, cb)
    assert session_cookie(cb), f"the callback set no {COOKIE} cookie: {cb.headers}\n{b.trail()}"
    return b


def console(b: Browser, gw) -> httpx.Response:
    r = b.get(url(gw, "/admin"))
    assert r.status_code == 200 and is_html(r), f"GET /admin: {r.status_code} {r.headers} {r.text[:500]!r}"
    assert_page_headers(r)
    return r


def forms_at(page: httpx.Response, path: str) -> list[dict]:
    """The POST forms of `page` whose action is `path`."""
    out = []
    for f in html_forms(page.text):
        action = urllib.parse.urljoin(str(page.url), f["attrs"].get("action") or str(page.url))
        if urllib.parse.urlsplit(action).path == path:
            assert f["attrs"].get("method", "get").lower() == "post", f"the form to {path} is not method=post: {f}"
            out.append(f)
    return out


def one_form(page: httpx.Response, path: str) -> dict:
    fs = forms_at(page, path)
    assert len(fs) == 1, f"expected one form to {path}, found {len(fs)}: {page.text[:3000]!r}"
    return fs[0]


def inputs(form: dict) -> dict[str, dict]:
    return {i["name"]: i for i in form["inputs"] if i.get("name")}


def hidden(form: dict, name: str) -> str:
    i = inputs(form).get(name)
    assert i is not None and i.get("type", "").lower() == "hidden", f"no hidden input `{name}` in {form}"
    assert i.get("value"), f"hidden input `{name}` has no value: {form}"
    return i["value"]


def form_data(form: dict, **fields: str | None) -> dict[str, str]:
    """What a browser posts for `form`: every named input with its value (unchecked boxes left
    out), then `fields` (None drops a field)."""
    data: dict[str, str] = {}
    for i in form["inputs"]:
        name, kind = i.get("name"), i.get("type", "text").lower()
        if not name or kind in ("submit", "button", "image", "reset", "file"):
            continue
        if kind in ("checkbox", "radio") and "checked" not in i:
            continue
        data[name] = i.get("value", "")
    for k, v in fields.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    return data


def submit(client: httpx.Client, page: httpx.Response, form: dict, **fields: str | None) -> httpx.Response:
    action = urllib.parse.urljoin(str(page.url), form["attrs"].get("action") or str(page.url))
    return client.post(action, data=form_data(form, **fields))


def revoke_ids(page: httpx.Response, path: str) -> set[str]:
    """The `id`s of the page's revoke forms to `path` (one per active key or client)."""
    return {hidden(f, "id") for f in forms_at(page, path)}


def code_text(page: httpx.Response, element_id: str) -> str | None:
    """The text of `<code id="element_id">` in `page`, if there is one."""
    m = re.search(r"<code\b[^>]*\bid\s*=\s*[\"']?" + re.escape(element_id) + r"[\"']?[^>]*>([^<]*)</code>", page.text)
    return html.unescape(m.group(1)).strip() if m else None


def new_name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(5)}"


def create_key(b: Browser, gw, name: str) -> tuple[str, str, httpx.Response]:
    """Create a key in the console: (key, the id of its revoke form, the creation page)."""
    before = console(b, gw)
    known = revoke_ids(before, "/admin/keys/revoke")
    r = submit(b, before, one_form(before, "/admin/keys"), name=name, providers="mock")
    assert r.status_code == 200 and is_html(r), f"POST /admin/keys: {r.status_code} {r.headers} {r.text[:500]!r}"
    assert_page_headers(r)
    key = code_text(r, "secret")
    assert key and key.startswith("pc-"), f'no <code id="secret">pc-...</code> on the creation page: {r.text[:3000]!r}'
    after = console(b, gw)
    new = revoke_ids(after, "/admin/keys/revoke") - known
    assert len(new) == 1, f"expected one new key revoke form after creating `{name}`, got {new}: {after.text[:3000]!r}"
    return key, new.pop(), r


def create_client(b: Browser, gw, name: str, public: bool = False, redirect_uris: str = "") -> tuple[str, str | None, str, httpx.Response]:
    """Create an OAuth client in the console: (client_id, secret, its revoke form's id, the page)."""
    before = console(b, gw)
    known = revoke_ids(before, "/admin/clients/revoke")
    form = one_form(before, "/admin/clients")
    fields = {"name": name, "providers": "mock", "redirect_uris": redirect_uris}
    if public:
        fields["public"] = inputs(form)["public"].get("value") or "on"
    r = submit(b, before, form, **fields)
    assert r.status_code == 200 and is_html(r), f"POST /admin/clients: {r.status_code} {r.headers} {r.text[:500]!r}"
    assert_page_headers(r)
    client_id = code_text(r, "client-id")
    assert client_id and client_id.startswith("pcc_"), f'no <code id="client-id">pcc_...</code>: {r.text[:3000]!r}'
    secret = code_text(r, "secret")
    if public:
        assert secret is None and "pccs_" not in r.text, f"a public client has no secret: {r.text[:3000]!r}"
    else:
        assert secret and secret.startswith("pccs_"), f'no <code id="secret">pccs_...</code>: {r.text[:3000]!r}'
    after = console(b, gw)
    new = revoke_ids(after, "/admin/clients/revoke") - known
    assert len(new) == 1, f"expected one new client revoke form after creating `{name}`, got {new}: {after.text[:3000]!r}"
    return client_id, secret, new.pop(), r


def chat(gw, key: str):
    return support.sdk(gw.base + "/v1", api_key=key).chat.completions.create(model="mock:echo", messages=MSG)


def assert_served(gw, key: str):
    m = support.marker()
    r = support.sdk(gw.base + "/v1", api_key=key).chat.completions.create(
        model="mock:echo", messages=[{"role": "user", "content": f"echo {m}"}])
    assert r.choices[0].message.content.endswith(f"You said: echo {m}"), r


def wait_refused(gw, key: str, within: float = REVOKE_WITHIN):
    """`key` (a virtual key or an access token) is refused on /v1 within `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            chat(gw, key)
        except openai.AuthenticationError as e:
            assert e.status_code == 401
            support.assert_error_shape(support.error_json(e))
            return
        if time.monotonic() > deadline:
            pytest.fail(f"still served {within}s after its revocation in the console")
        time.sleep(0.2)


def cc_token(gw, client_id: str, secret: str) -> httpx.Response:
    return httpx.post(gw.base + "/api/auth/oauth2/token", data={"grant_type": "client_credentials"},
                      auth=(client_id, secret), timeout=support.TIMEOUT)


def audit_text(gw) -> str:
    try:
        return (gw.dir / "audit.jsonl").read_text()
    except FileNotFoundError:
        return ""


def audit_events(gw) -> list[dict]:
    return [json.loads(line)["record"] for line in audit_text(gw).splitlines() if line.strip()]


def same_id(a: str, b: str) -> bool:
    """Ids may be shown whole or shortened (a prefix of at least 8 characters)."""
    return bool(a and b) and (a == b or (min(len(a), len(b)) >= 8 and (a.startswith(b) or b.startswith(a))))


def about(e: dict, name: str, ids: tuple[str, ...]) -> bool:
    """Whether audit record `e` is a change to the object named `name` with one of `ids`."""
    if e.get("event") not in CHANGES:
        return False
    if e.get("name") == name or e.get("match") == name:
        return True
    mine = [v for v in (e.get("id"), e.get("client_id"), e.get("match")) if isinstance(v, str)]
    mine += [v for v in e.get("ids") or [] if isinstance(v, str)]
    return any(same_id(m, i) for m in mine for i in ids)


def wait_audit(gw, name: str, ids: tuple[str, ...], events: list[str]) -> list[dict]:
    """The audit records about `name`/`ids`, once their events are `events` (in order)."""
    deadline = time.monotonic() + AUDIT_WITHIN
    while True:
        mine = [e for e in audit_events(gw) if about(e, name, ids)]
        if [e.get("event") for e in mine] == events or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [e.get("event") for e in mine] == events, f"audit records about `{name}` {ids}: {mine}"
    for e in mine:
        assert e.get("actor") == ACTOR, f"audit record without the acting admin {ACTOR!r}: {e}"
    return mine


# -- sign-in --------------------------------------------------------------------------------------


def test_the_console_without_a_session_redirects_to_the_idp_with_pkce(gw, idp):
    seen = []
    for _ in range(2):
        r = httpx.get(url(gw, "/admin"), timeout=support.TIMEOUT)
        assert r.status_code == 302, f"GET /admin without a session: {r.status_code} {r.headers} {r.text[:500]!r}"
        target = location(r)
        endpoint = idp.metadata()["authorization_endpoint"]
        assert target.startswith(endpoint + "?"), f"Location {target!r} is not the IdP's authorization endpoint {endpoint!r}"
        p = parse_redirect(r)
        assert p.get("response_type") == "code" and p.get("client_id") == LOGIN_CLIENT_ID, p
        assert p.get("redirect_uri") == url(gw, CALLBACK), p
        assert "openid" in p.get("scope", "").split(), p
        assert p.get("code_challenge_method") == "S256", p
        assert re.fullmatch(r"[A-Za-z0-9_-]{43}", p.get("code_challenge", "")), f"not a base64url SHA-256: {p}"
        assert len(p.get("state", "")) >= 16 and len(p.get("nonce", "")) >= 16, f"state and nonce should be random: {p}"
        seen.append(p)
    for k in ("state", "nonce", "code_challenge"):
        assert seen[0][k] != seen[1][k], f"`{k}` repeats between two sign-ins: {seen}"


def test_alice_signs_in_and_sees_the_console(gw):
    b, cb = sign_in(gw)
    with contextlib.closing(b):
        assert_redirects_to_console(gw, cb)
        header = session_cookie(cb)
        assert header, f"the callback set no {COOKIE} cookie: {cb.headers}"
        value, attrs = cookie_attrs(header)
        assert value, header
        assert attrs.get("path") == "/admin", f"cookie path: {header!r}"
        assert "httponly" in attrs, f"cookie not HttpOnly: {header!r}"
        # Strict, or Lax: a Strict cookie set at the end of a cross-site redirect chain (the IdP's)
        # is not sent on that chain's last hop in some browsers; the POSTs carry a CSRF token.
        assert attrs.get("samesite", "").lower() in ("strict", "lax"), f"cookie not SameSite=Strict or Lax: {header!r}"
        assert value not in cb.headers.get("location", ""), cb.headers

        page = console(b, gw)
        assert ACTOR in page.text, f"the signed-in admin {ACTOR!r} is not on the page: {page.text[:2000]!r}"
        keys = one_form(page, "/admin/keys")
        assert {"name", "providers"} <= set(inputs(keys)), keys
        hidden(keys, "csrf")
        clients = one_form(page, "/admin/clients")
        assert {"name", "providers", "redirect_uris", "public"} <= set(inputs(clients)), clients
        public = inputs(clients)["public"]
        assert public.get("type", "").lower() == "checkbox" and public.get("value") == "1", public
        hidden(clients, "csrf")
        hidden(one_form(page, "/admin/logout"), "csrf")
        for path in ("/admin/keys/revoke", "/admin/clients/revoke"):
            for f in forms_at(page, path):
                hidden(f, "id")
                hidden(f, "csrf")


def test_the_console_is_not_on_the_client_listener(gw):
    for path in ("/admin", CALLBACK):
        r = httpx.get(gw.base + path, timeout=support.TIMEOUT)
        assert r.status_code == 404, f"GET {path} on the client listener: {r.status_code} {r.headers} {r.text[:300]!r}"


def test_a_callback_the_browser_did_not_start_gets_no_session(gw):
    # Someone else's code and state, replayed from another browser: no session (login CSRF).
    with Browser() as victim:
        redirect = to_callback(gw, victim)
        with Browser() as attacker:
            assert_no_session(attacker.get(location(redirect)), "a callback from another browser")
            assert attacker.get(url(gw, "/admin")).status_code == 302
        # The browser that started it still can finish it, once.
        done = victim.get(location(redirect))
        assert_redirects_to_console(gw, done)
        assert session_cookie(done), done.headers
        assert_no_session(victim.get(location(redirect)), "the same callback again")
    # Made-up parameters, or none.
    for query in ("?code=made-up&state=made-up", "?state=made-up", "?error=access_denied&state=made-up", ""):
        assert_no_session(httpx.get(url(gw, CALLBACK) + query, timeout=support.TIMEOUT), f"GET {CALLBACK}{query}")


def test_bob_is_not_an_admin(gw):
    b, cb = sign_in(gw, login="bob", mfa=True)
    with contextlib.closing(b):
        if cb.status_code == 403:
            assert_no_session(cb, "a refused sign-in")
            page = cb
        else:
            assert_redirects_to_console(gw, cb)
            page = b.get(url(gw, "/admin"))
        assert page.status_code == 403 and is_html(page), f"bob at the console: {page.status_code} {page.headers} {page.text[:500]!r}"
        assert_page_headers(page)
        assert re.search(r"\bnot\b[^.<]{0,40}\badmin", page.text, re.I), f"the page does not say bob is not an admin: {page.text[:2000]!r}"
        assert not forms_at(page, "/admin/keys") and not forms_at(page, "/admin/clients"), page.text[:2000]


def test_alice_without_mfa_is_refused(gw):
    b, cb = sign_in(gw, login="alice", mfa=False)
    with contextlib.closing(b):
        if cb.status_code == 403:
            assert_no_session(cb, "a refused sign-in")
            page = cb
        else:
            assert_redirects_to_console(gw, cb)
            page = b.get(url(gw, "/admin"))
        assert page.status_code == 403 and is_html(page), f"alice without MFA: {page.status_code} {page.headers} {page.text[:500]!r}"
        assert_page_headers(page)
        assert re.search(r"mfa|multi-factor|two-factor", page.text, re.I), f"the page does not say MFA is required: {page.text[:2000]!r}"
        assert not forms_at(page, "/admin/keys") and not forms_at(page, "/admin/clients"), page.text[:2000]


# -- keys -----------------------------------------------------------------------------------------


def test_a_key_created_in_the_console_works_until_revoked(gw, alice):
    name = new_name("ck")
    key, key_id, _ = create_key(alice, gw, name)
    assert_served(gw, key)
    page = console(alice, gw)
    assert name in page.text, f"the new key `{name}` is not listed: {page.text[:3000]!r}"
    assert key not in page.text, "the console shows a key only once, on its creation page"

    (form,) = [f for f in forms_at(page, "/admin/keys/revoke") if hidden(f, "id") == key_id]
    r = submit(alice, page, form)
    assert_redirects_to_console(gw, r)
    wait_refused(gw, key)
    page = console(alice, gw)
    assert key_id not in revoke_ids(page, "/admin/keys/revoke"), "a revoked key keeps its revoke form"
    assert key not in page.text

    wait_audit(gw, name, (key_id,), ["key_created", "key_revoked"])
    assert key not in audit_text(gw), "the audit trail holds a key"


def test_key_names_are_escaped(gw, alice):
    name = f"x<b>y{secrets.token_hex(3)}</b>&amp;"
    page = console(alice, gw)
    r = submit(alice, page, one_form(page, "/admin/keys"), name=name, providers="mock")
    for p in (r, console(alice, gw)):
        assert name not in p.text, f"a key name went into the page unescaped: {p.text[:3000]!r}"


# -- clients --------------------------------------------------------------------------------------


def test_a_confidential_client_created_in_the_console_gets_tokens_until_revoked(gw, alice):
    name = new_name("cc")
    client_id, secret, form_id, _ = create_client(alice, gw, name)
    tok = cc_token(gw, client_id, secret)
    assert tok.status_code == 200, tok.text
    access = tok.json()["access_token"]
    assert_served(gw, access)
    page = console(alice, gw)
    assert name in page.text, f"the new client `{name}` is not listed: {page.text[:3000]!r}"
    assert secret not in page.text, "the console shows a client secret only once, on its creation page"

    (form,) = [f for f in forms_at(page, "/admin/clients/revoke") if hidden(f, "id") == form_id]
    r = submit(alice, page, form)
    assert_redirects_to_console(gw, r)
    deadline = time.monotonic() + REVOKE_WITHIN
    while (again := cc_token(gw, client_id, secret)).status_code == 200:
        assert time.monotonic() < deadline, f"the revoked client still gets tokens after {REVOKE_WITHIN}s"
        time.sleep(0.2)
    assert again.status_code == 401 and again.json().get("error") == "invalid_client", again.text
    wait_refused(gw, access)
    page = console(alice, gw)
    assert form_id not in revoke_ids(page, "/admin/clients/revoke"), "a revoked client keeps its revoke form"

    wait_audit(gw, name, (client_id, form_id), ["client_created", "client_revoked"])
    assert secret not in audit_text(gw), "the audit trail holds a client secret"


def test_a_public_client_created_in_the_console(gw, alice):
    name = new_name("pc")
    client_id, _, _, _ = create_client(alice, gw, name, public=True, redirect_uris=f"{APP_REDIRECT},{APP_REDIRECT_2}")
    assert name in console(alice, gw).text
    # No secret: no client credentials grant.
    r = httpx.post(gw.base + "/api/auth/oauth2/token", data={"grant_type": "client_credentials", "client_id": client_id},
                   timeout=support.TIMEOUT)
    assert r.status_code in (400, 401) and r.json().get("error") in ("unauthorized_client", "invalid_client"), r.text
    # Its redirect URIs are registered: /authorize sends the user to sign in, not to a 400 page.
    for redirect_uri in (APP_REDIRECT, APP_REDIRECT_2):
        q = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "state": "st",
             "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM", "code_challenge_method": "S256", "scope": "llm:proxy"}
        r = httpx.get(gw.base + "/api/auth/oauth2/authorize?" + urllib.parse.urlencode(q), timeout=support.TIMEOUT)
        assert r.status_code in (302, 303) and not location(r).startswith(redirect_uri), (redirect_uri, r.status_code, r.headers, r.text[:300])
    wait_audit(gw, name, (client_id,), ["client_created"])


def test_a_provider_key_stored_in_the_console_is_shown_by_its_last_characters_only(gw, alice):
    name, secret = new_name("pk"), "sk-console-" + secrets.token_hex(8)
    before = console(alice, gw)
    r = submit(alice, before, one_form(before, "/admin/provider-keys"), name=name, provider="openai", api_key=secret)
    assert_redirects_to_console(gw, r)
    assert inputs(one_form(before, "/admin/provider-keys"))["api_key"].get("type") == "password"
    page = console(alice, gw)
    assert name in page.text and "…" + secret[-4:] in page.text and secret not in page.text, page.text[:3000]
    (delete,) = [f for f in forms_at(page, "/admin/provider-keys/delete") if hidden(f, "name") == name]
    assert_redirects_to_console(gw, submit(alice, page, delete))
    assert name not in console(alice, gw).text
    deadline = time.monotonic() + AUDIT_WITHIN
    while True:
        events = [e.get("event") for e in audit_events(gw) if e.get("name") == name]
        if events == ["provider_key_created", "provider_key_deleted"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert events == ["provider_key_created", "provider_key_deleted"], events
    assert secret not in audit_text(gw)


def test_a_policy_override_set_in_the_console_is_listed_and_removable(gw, alice):
    before = console(alice, gw)
    form = one_form(before, "/admin/policies")
    r = submit(alice, before, form, scope="groups", name="oidc-team", value='{"max_tier": "medium"}')
    assert_redirects_to_console(gw, r)
    page = console(alice, gw)
    assert "{&quot;max_tier&quot;:&quot;medium&quot;}" in page.text, page.text[:4000]
    assert "mock" in page.text and "Egress allow-list" in page.text
    bad = submit(alice, page, one_form(page, "/admin/policies"), scope="groups", name="oidc-team", value="{nope")
    assert bad.status_code == 400 and "invalid JSON" in bad.text, bad.text[:500]
    (remove,) = [f for f in forms_at(page, "/admin/policies/remove") if hidden(f, "name") == "oidc-team"]
    assert_redirects_to_console(gw, submit(alice, page, remove))
    assert not forms_at(console(alice, gw), "/admin/policies/remove")


def audit_rows(page: httpx.Response) -> list[tuple[int, str]]:
    """(seq, event) of each record row on an audit page."""
    return [(int(n), html.unescape(ev)) for n, ev in re.findall(r"<tr><td>(\d+)</td><td>[^<]*</td><td>([^<]*)</td>", page.text)]


def test_the_audit_page_lists_records_newest_first_with_filters_and_paging(gw, alice):
    names = [new_name("aud") for _ in range(2)]
    made = [create_key(alice, gw, name) for name in names]
    for name, (_, key_id, _) in zip(names, made):
        wait_audit(gw, name, (key_id,), ["key_created"])
    assert "/admin/audit" in console(alice, gw).text, "the console does not link to the audit records"

    page = alice.get(url(gw, "/admin/audit"))
    assert page.status_code == 200 and is_html(page), page.text[:500]
    assert_page_headers(page)
    rows = audit_rows(page)
    assert rows and [n for n, _ in rows] == sorted((n for n, _ in rows), reverse=True), rows
    assert all(name in page.text for name in names) and ACTOR in page.text
    assert all(key not in page.text for key, _, _ in made), "the audit page shows a key"

    # The filter form is a GET form; one record a page, the older link goes on from there.
    (form,) = [f for f in html_forms(page.text) if f["attrs"].get("action") == "/admin/audit"]
    assert {"event", "principal"} <= set(inputs(form)), form
    first = alice.get(url(gw, "/admin/audit"), params={"event": "key_created", "principal": ACTOR, "limit": "1"})
    assert audit_rows(first) == [(audit_rows(first)[0][0], "key_created")] and names[1] in first.text, first.text[-2000:]
    m = re.search(r'id="older" href="([^"]+)"', first.text)
    assert m, "no link to older records"
    older = alice.get(url(gw, html.unescape(m.group(1))))
    assert older.status_code == 200 and names[0] in older.text, older.text[-2000:]
    assert audit_rows(older)[0][0] < audit_rows(first)[0][0] and audit_rows(older)[0][1] == "key_created"

    reflected = alice.get(url(gw, "/admin/audit"), params={"event": "<b>x</b>"})
    assert reflected.status_code == 200 and "<b>x</b>" not in reflected.text and audit_rows(reflected) == []
    assert alice.get(url(gw, "/admin/audit"), params={"limit": "0"}).status_code == 400
    anon = httpx.get(url(gw, "/admin/audit"), timeout=support.TIMEOUT)
    assert_redirects_to_console(gw, anon)


# -- CSRF and the session -------------------------------------------------------------------------


def test_posts_without_or_with_a_wrong_csrf_are_refused(gw, alice):
    page = console(alice, gw)
    other = admin_browser(gw)  # alice in another browser: another session, another token
    with contextlib.closing(other):
        other_csrf = hidden(one_form(console(other, gw), "/admin/keys"), "csrf")
    assert other_csrf != hidden(one_form(page, "/admin/keys"), "csrf"), "two sessions share a CSRF token"
    names = []
    for csrf in (None, "", "not-the-csrf-token", other_csrf):
        for path, extra in (("/admin/keys", {}), ("/admin/clients", {"redirect_uris": ""})):
            name = new_name("csrf")
            names.append(name)
            r = submit(alice, page, one_form(page, path), name=name, providers="mock", csrf=csrf, **extra)
            assert r.status_code == 403, f"POST {path} with csrf={csrf!r}: {r.status_code} {r.text[:500]!r}"
            assert code_text(r, "secret") is None and code_text(r, "client-id") is None, r.text[:1000]
    after = console(alice, gw)
    for name in names:
        assert name not in after.text, f"`{name}` was created by a POST with a bad CSRF token"
    assert not [e for e in audit_events(gw) if e.get("name") in names]

    # Revoke and logout need the token as well.
    key, key_id, _ = create_key(alice, gw, new_name("csrf-keep"))
    page = console(alice, gw)
    (form,) = [f for f in forms_at(page, "/admin/keys/revoke") if hidden(f, "id") == key_id]
    for csrf in (None, "not-the-csrf-token", other_csrf):
        r = submit(alice, page, form, csrf=csrf)
        assert r.status_code == 403, f"revoke with csrf={csrf!r}: {r.status_code} {r.text[:500]!r}"
        r = submit(alice, page, one_form(page, "/admin/logout"), csrf=csrf)
        assert r.status_code == 403, f"logout with csrf={csrf!r}: {r.status_code} {r.text[:500]!r}"
    assert key_id in revoke_ids(console(alice, gw), "/admin/keys/revoke")
    assert_served(gw, key)


def test_posts_without_the_session_cookie_change_nothing(gw, alice):
    key, key_id, _ = create_key(alice, gw, new_name("nocookie-keep"))
    page = console(alice, gw)
    names = []
    with httpx.Client(timeout=support.TIMEOUT, follow_redirects=False) as stranger:  # the right forms, no cookie
        for path, extra in (("/admin/keys", {}), ("/admin/clients", {"redirect_uris": ""})):
            name = new_name("nocookie")
            names.append(name)
            r = submit(stranger, page, one_form(page, path), name=name, providers="mock", **extra)
            if r.status_code == 303:
                assert_redirects_to_console(gw, r)
            else:
                assert r.status_code in (401, 403), f"POST {path} without a session: {r.status_code} {r.text[:500]!r}"
            assert code_text(r, "secret") is None and code_text(r, "client-id") is None, r.text[:1000]
        (form,) = [f for f in forms_at(page, "/admin/keys/revoke") if hidden(f, "id") == key_id]
        r = submit(stranger, page, form)
        assert r.status_code in (303, 401, 403), f"revoke without a session: {r.status_code} {r.text[:500]!r}"
    after = console(alice, gw)
    for name in names:
        assert name not in after.text, f"`{name}` was created by a POST without the session cookie"
    assert key_id in revoke_ids(after, "/admin/keys/revoke"), "a POST without the session cookie revoked a key"
    assert_served(gw, key)


def test_logout_ends_the_session(gw, idp):
    with contextlib.closing(admin_browser(gw)) as b:
        page = console(b, gw)
        value = session_cookie_value(b)
        r = submit(b, page, one_form(page, "/admin/logout"))
        assert_redirects_to_console(gw, r)
        again = b.get(url(gw, "/admin"))
        endpoint = idp.metadata()["authorization_endpoint"]
        assert again.status_code == 302 and location(again).startswith(endpoint + "?"), (again.status_code, again.headers)
    # The old cookie, replayed: the session is over on the server, not only in the browser.
    with httpx.Client(timeout=support.TIMEOUT, follow_redirects=False, headers={"cookie": f"{COOKIE}={value}"}) as replay:
        r = replay.get(url(gw, "/admin"))
        assert r.status_code == 302, f"the logged-out session still opens the console: {r.status_code} {r.text[:300]!r}"
        r = replay.post(url(gw, "/admin/keys"), data={"name": new_name("after-logout"), "providers": "mock",
                                                      "csrf": hidden(one_form(page, "/admin/keys"), "csrf")})
        assert r.status_code in (303, 401, 403), f"POST after logout: {r.status_code} {r.text[:300]!r}"

