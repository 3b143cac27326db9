"""Portcullis's own OAuth 2.1 authorization server, end to end.

One redis-server, one IdP (tests/idp/server.mjs: users sign in there through the confidential
client `portcullis-login`) and one gateway (`[oauth] login_idp = "corp"`, open registration of
public clients, a static confidential client `batch`) for the module. OAuth clients are authlib
(client credentials, code exchange with PKCE, refresh); negative cases are raw httpx so status,
headers and the RFC 6749 error body can be asserted; the issued access tokens go to /v1 through
the official `openai` SDK. A browser-less user agent (idp.Browser) walks /authorize through the
IdP's login form to the gateway's consent page. The `portcullis clients` CLI manages stored
clients in the same redis.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import time
import urllib.parse

import httpx
import openai
import pytest
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import OAuth2Client

import support
from idp import LOGIN_CLIENT_ID, LOGIN_CLIENT_SECRET, Browser, Idp, b64url_encode, decode_jwt, html_forms, parse_redirect

CALLBACK_PATH = "/api/auth/oauth2/callback"
OAUTH = "/api/auth/oauth2"
BATCH_ID = "batch-client"
BATCH_SECRET = "batch-secret"
SCOPE = "llm:proxy"
ACCESS_SECONDS = 3600
# The apps' redirect URIs: nothing listens there, the tests never fetch them.
APP_REDIRECT = "http://127.0.0.1:7777/cb"
APP_REDIRECT_2 = "http://127.0.0.1:7777/other-cb"
REDIS_START_TIMEOUT = 10.0


TEAM_OPENAI_KEY = "sk-oauth-team-openai-4e1b"
VAULT_OPENAI_KEY = "sk-oauth-vault-openai-71f3"
SECRETS_ENV = {"PORTCULLIS_SECRETS_KEY": "ab" * 32}  # gateway and CLI seal/open stored provider keys
CLI_OPENAI_KEY = "sk-oauth-cli-openai-90aa"


def render_config(idp_port: int, redis_port: int, upstream_port: int):
    def render(port: int, admin_port: int, workdir) -> str:
        return f"""# Written by tests/clients/test_oauth.py.
{support.server_section(port, admin_port, workdir)}
[state]
backend = "redis"
redis_url = "redis://127.0.0.1:{redis_port}/0"

[egress]
allow_hosts = ["127.0.0.1", "localhost"]

[providers.mock]
kind = "mock"
models = ["echo"]

[providers.openai]
kind = "openai"
base_url = "http://127.0.0.1:{upstream_port}/v1"
api_key = "{support.OPENAI_UPSTREAM_KEY}"
personal_keys = true                 # users may store their own; an app's token may not change them

[groups.oidc-team]

[provider_keys.team-openai]          # alice's group: her user tokens call openai with it
provider = "openai"
api_key = "{TEAM_OPENAI_KEY}"
groups = ["oidc-team"]

[provider_keys.cli-openai]           # mapped to a client made with `portcullis clients create`
provider = "openai"
api_key = "{CLI_OPENAI_KEY}"

[oauth]
login_idp = "corp"
registration = "open"
access_token_seconds = {ACCESS_SECONDS}

[[auth.oidc]]
name = "corp"
issuer = "http://127.0.0.1:{idp_port}"
audiences = ["portcullis"]
login_client_id = "{LOGIN_CLIENT_ID}"
login_client_secret = "{LOGIN_CLIENT_SECRET}"
proxies = ["default"]
providers = ["mock"]
groups_claim = "groups"

[[auth.oauth_clients]]
name = "batch"
client_id = "{BATCH_ID}"
client_secret_sha256 = "{support.sha256_hex(BATCH_SECRET)}"
providers = ["mock"]
"""

    return render


# -- processes ----------------------------------------------------------------------------------


class Redis:
    """`redis-server` on a free port, nothing persisted."""

    def __init__(self, workdir):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "redis.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> "Redis":
        binary = shutil.which("redis-server")
        if not binary:
            raise RuntimeError("`redis-server` is not on PATH: the OAuth tests keep clients and tokens in redis (Debian: `apt-get install redis-server`)")
        for _ in range(3):
            self.port = support.free_port()
            argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.dir)]
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             cwd=str(self.dir), preexec_fn=support._die_with_parent)
            deadline = time.monotonic() + REDIS_START_TIMEOUT
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self.ping():
                    return self
                time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"redis-server did not answer PING on 127.0.0.1:{self.port}:\n{self.log_path.read_text(errors='replace')[-2000:]}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self):
        p = self.proc
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)


@pytest.fixture(scope="module")
def redis(workdir):
    r = Redis(workdir / "oauth-redis").start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def idp_port():
    return support.free_port()


@pytest.fixture(scope="module")
def _gateway(redis, idp_port, upstream, workdir):
    """Started before the IdP (which must know the gateway's callback URL, and so its port): the
    gateway fetches the IdP's discovery document lazily, at the first sign-in."""
    import conftest

    with conftest.dedicated_gateway("oauth", workdir / "oauth", render_config(idp_port, redis.port, upstream.port), env=SECRETS_ENV) as g:
        yield g


@pytest.fixture(scope="module")
def idp(_gateway, idp_port, workdir):
    i = Idp(workdir / "oauth-idp", name="oauth-idp").start(port=idp_port, rp_redirects=[_gateway.base + CALLBACK_PATH])
    yield i
    i.stop()


@pytest.fixture(scope="module")
def gw(_gateway, idp):
    """The gateway, with its login IdP running."""
    return _gateway


# -- helpers ------------------------------------------------------------------------------------


def ep(gw, name: str) -> str:
    return f"{gw.base}{OAUTH}/{name}"


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, b64url_encode(hashlib.sha256(verifier.encode()).digest())


def oauth_error(r: httpx.Response, status: int | tuple[int, ...], error: str | tuple[str, ...]) -> dict:
    """`r` is an RFC 6749 error: the status, JSON `{"error": ..., "error_description": ...}`
    (never OpenAI's `{"error": {...}}`)."""
    statuses = (status,) if isinstance(status, int) else status
    errors = (error,) if isinstance(error, str) else error
    assert r.status_code in statuses, f"expected {statuses}, got {r.status_code}: {r.text[:500]!r}"
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), f"not an RFC 6749 error body: {body!r}"
    assert body["error"] in errors, f"expected error {errors}, got {body!r}"
    assert isinstance(body.get("error_description"), str) and body["error_description"], body
    return body


def assert_no_store(r: httpx.Response):
    assert "no-store" in r.headers.get("cache-control", ""), f"Cache-Control: {r.headers.get('cache-control')!r} on {r.request.url}"


def token_post(gw, data, auth=None, **kw) -> httpx.Response:
    r = httpx.post(ep(gw, "token"), data=data, auth=auth, timeout=support.TIMEOUT, **kw)
    assert_no_store(r)
    return r


def cc_token(gw, client_id=BATCH_ID, secret=BATCH_SECRET, method="client_secret_basic", **params) -> dict:
    with OAuth2Client(client_id=client_id, client_secret=secret, token_endpoint_auth_method=method, timeout=support.TIMEOUT) as o:
        return dict(o.fetch_token(ep(gw, "token"), grant_type="client_credentials", **params))


def public_client(client_id: str) -> OAuth2Client:
    return OAuth2Client(client_id=client_id, token_endpoint_auth_method="none", timeout=support.TIMEOUT)


def register(gw, name: str | None = None, redirect_uris=(APP_REDIRECT, APP_REDIRECT_2), **overrides) -> dict:
    meta = {
        "client_name": name or f"app-{secrets.token_hex(4)}",
        "redirect_uris": list(redirect_uris),
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        **overrides,
    }
    r = httpx.post(ep(gw, "register"), json=meta, timeout=support.TIMEOUT)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["client_id"] and "client_secret" not in body, body
    return body


def authorize_url(gw, client_id: str, challenge: str | None, state: str, redirect_uri=APP_REDIRECT, method: str | None = "S256", **extra) -> str:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "code_challenge": challenge,
        "code_challenge_method": method,
        "state": state,
        "scope": SCOPE,
        **extra,
    }
    return ep(gw, "authorize") + "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})


def consent_page(gw, browser: Browser, client: dict, login="alice", mfa=True, redirect_uri=APP_REDIRECT):
    """Sign in at the IdP through the gateway; returns (consent page, verifier, state)."""
    verifier, challenge = pkce()
    state = secrets.token_urlsafe(12)
    page = browser.authorize(authorize_url(gw, client["client_id"], challenge, state, redirect_uri), login=login, mfa=mfa,
                             stop_at=(APP_REDIRECT, APP_REDIRECT_2))
    assert page.status_code == 200 and page.headers.get("content-type", "").startswith("text/html"), (
        f"expected the consent page, got {page.status_code} {page.headers.get('location')!r} {page.text[:500]!r}\n{browser.trail()}"
    )
    return page, verifier, state


def sign_in(gw, client: dict, login="alice", mfa=True, redirect_uri=APP_REDIRECT) -> tuple[str, str]:
    """The whole user flow up to the app's redirect: (code, verifier)."""
    with Browser() as b:
        page, verifier, state = consent_page(gw, b, client, login, mfa, redirect_uri)
        done = b.consent(page, "allow")
        assert done.status_code == 302 and done.headers["location"].startswith(redirect_uri + "?"), (done.status_code, done.headers, done.text[:300])
        params = parse_redirect(done)
        assert params.get("state") == state and params.get("code"), params
        return params["code"], verifier


def exchange(gw, client: dict, code: str, verifier: str, redirect_uri=APP_REDIRECT) -> dict:
    with public_client(client["client_id"]) as o:
        return dict(o.fetch_token(ep(gw, "token"), grant_type="authorization_code", code=code, redirect_uri=redirect_uri, code_verifier=verifier))


def user_tokens(gw, client: dict, login="alice", mfa=True) -> dict:
    code, verifier = sign_in(gw, client, login, mfa)
    return exchange(gw, client, code, verifier)


def introspect(gw, token: str, auth=None, client_id: str | None = None) -> dict:
    data = {"token": token}
    if client_id:
        data["client_id"] = client_id
    r = httpx.post(ep(gw, "introspect"), data=data, auth=auth, timeout=support.TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()


def revoke(gw, token: str, auth=None, client_id: str | None = None, hint: str | None = None) -> httpx.Response:
    data = {"token": token}
    if client_id:
        data["client_id"] = client_id
    if hint:
        data["token_type_hint"] = hint
    r = httpx.post(ep(gw, "revoke"), data=data, auth=auth, timeout=support.TIMEOUT)
    assert r.status_code == 200 and r.json() == {}, (r.status_code, r.text)
    return r


def chat(gw, token: str, text: str = "hello oauth"):
    return support.sdk(gw.base + "/v1", api_key=token).chat.completions.create(model="mock:echo", messages=[{"role": "user", "content": text}])


def assert_served(gw, token: str):
    m = support.marker()
    r = chat(gw, token, f"echo {m}")
    assert r.choices[0].message.content.endswith(f"You said: echo {m}"), r


def assert_invalid_token(gw, token: str):
    with pytest.raises(openai.AuthenticationError) as info:
        chat(gw, token)
    e = info.value
    assert e.status_code == 401
    support.assert_error_shape(support.error_json(e), code="invalid_token")
    www = e.response.headers.get("www-authenticate", "")
    assert 'error="invalid_token"' in www, f"WWW-Authenticate: {www!r}"


def wait_invalid(gw, token: str, within: float):
    """The token is refused on /v1 within `within` seconds (caches may hold it that long)."""
    deadline = time.monotonic() + within
    while True:
        try:
            chat(gw, token)
        except openai.AuthenticationError:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"token still served {within}s after its revocation")
        time.sleep(0.2)
    assert_invalid_token(gw, token)


def run_cli(gw, *args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PORTCULLIS_")}
    full_env.update(env or {})
    return subprocess.run([str(support.gateway_binary()), *args[:2], "--config", str(gw.config_path), *args[2:]],
                          capture_output=True, text=True, timeout=30, env=full_env, input=stdin,
                          stdin=None if stdin is not None else subprocess.DEVNULL)


# -- the IdP's sign-in flow on its own (no gateway) ---------------------------------------------

LONE_CB = "http://127.0.0.1:9/api/auth/oauth2/callback"


@pytest.fixture(scope="module")
def lone_idp(workdir):
    i = Idp(workdir / "oauth-lone-idp", name="lone-idp").start(rp_redirects=[LONE_CB])
    yield i
    i.stop()


def _idp_sign_in(idp: Idp, login: str, mfa: bool, password: str = "pw"):
    meta = idp.metadata()
    verifier, challenge = pkce()
    state, nonce = secrets.token_urlsafe(8), secrets.token_urlsafe(8)
    url = meta["authorization_endpoint"] + "?" + urllib.parse.urlencode({
        "response_type": "code", "client_id": LOGIN_CLIENT_ID, "redirect_uri": LONE_CB, "scope": "openid",
        "state": state, "nonce": nonce, "code_challenge": challenge, "code_challenge_method": "S256",
    })
    with Browser() as b:
        r = b.authorize(url, login=login, mfa=mfa, password=password, stop_at=LONE_CB)
    return r, verifier, state, nonce


@pytest.mark.parametrize("login, mfa, method, amr, groups", [
    ("alice", True, "client_secret_basic", ["pwd", "otp", "mfa"], ["oidc-team"]),
    ("bob", False, "client_secret_post", ["pwd"], []),
])
def test_the_idp_signs_users_in_with_an_id_token_carrying_amr_nonce_and_groups(lone_idp, login, mfa, method, amr, groups):
    r, verifier, state, nonce = _idp_sign_in(lone_idp, login, mfa)
    assert r.status_code in (302, 303) and r.headers["location"].startswith(LONE_CB + "?"), (r.status_code, r.headers)
    params = parse_redirect(r)
    assert params["state"] == state and params["iss"] == lone_idp.issuer and params["code"], params
    with OAuth2Client(LOGIN_CLIENT_ID, LOGIN_CLIENT_SECRET, token_endpoint_auth_method=method, timeout=support.TIMEOUT) as o:
        tok = o.fetch_token(lone_idp.metadata()["token_endpoint"], grant_type="authorization_code", code=params["code"],
                            redirect_uri=LONE_CB, code_verifier=verifier)
    header, claims = decode_jwt(tok["id_token"])
    assert header["kid"] in {k["kid"] for k in lone_idp.jwks()["keys"]}, header
    assert claims["iss"] == lone_idp.issuer and claims["aud"] == LOGIN_CLIENT_ID, claims
    assert claims["sub"] == login and claims["nonce"] == nonce, claims
    assert claims["amr"] == amr and claims["groups"] == groups and claims["email"] == f"{login}@example.com", claims


def test_the_idp_login_form_refuses_the_password_wrong(lone_idp):
    r, *_ = _idp_sign_in(lone_idp, "alice", True, password="wrong")
    assert r.status_code == 200 and "Wrong login or password" in r.text, (r.status_code, r.text[:500])
    assert any(f["attrs"].get("action", "").endswith("/login") for f in html_forms(r.text)), r.text


# -- metadata -------------------------------------------------------------------------------------


def test_authorization_server_metadata(gw):
    r = httpx.get(gw.base + "/.well-known/oauth-authorization-server", timeout=support.TIMEOUT)
    assert r.status_code == 200, r.text
    m = r.json()
    assert m["issuer"] == gw.base, m
    for field, name in [("authorization_endpoint", "authorize"), ("token_endpoint", "token"), ("registration_endpoint", "register"),
                        ("revocation_endpoint", "revoke"), ("introspection_endpoint", "introspect")]:
        assert m[field] == ep(gw, name), (field, m)
    assert m["response_types_supported"] == ["code"], m
    assert {"authorization_code", "client_credentials", "refresh_token"} <= set(m["grant_types_supported"]), m
    assert m["code_challenge_methods_supported"] == ["S256"], m
    assert {"client_secret_basic", "client_secret_post", "none"} <= set(m["token_endpoint_auth_methods_supported"]), m
    assert SCOPE in m["scopes_supported"], m
    assert m["authorization_response_iss_parameter_supported"] is True, m


def test_protected_resource_metadata(gw):
    r = httpx.get(gw.base + "/.well-known/oauth-protected-resource", timeout=support.TIMEOUT)
    assert r.status_code == 200, r.text
    m = r.json()
    assert m["resource"] == gw.base and m["authorization_servers"] == [gw.base], m


# -- client credentials ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_client_credentials_token_chats_and_lists_models(gw, method):
    tok = cc_token(gw, method=method)
    assert tok["access_token"].startswith("pcat_"), tok
    assert tok["token_type"] == "Bearer" and tok["expires_in"] == ACCESS_SECONDS and tok["scope"] == SCOPE, tok
    assert "refresh_token" not in tok, tok
    assert_served(gw, tok["access_token"])
    ids = [m.id for m in support.sdk(gw.base + "/v1", api_key=tok["access_token"]).models.list()]
    assert any(i.startswith("mock:") for i in ids), ids


def test_client_credentials_with_the_scope_asked_for_explicitly(gw):
    tok = cc_token(gw, method="client_secret_post", scope=SCOPE)
    assert tok["scope"] == SCOPE, tok
    assert_served(gw, tok["access_token"])


def test_token_responses_are_not_cacheable(gw):
    ok = token_post(gw, {"grant_type": "client_credentials"}, auth=(BATCH_ID, BATCH_SECRET))  # asserts no-store
    assert ok.status_code == 200 and ok.json()["access_token"].startswith("pcat_"), ok.text
    bad = token_post(gw, {"grant_type": "client_credentials"}, auth=(BATCH_ID, "nope"))
    oauth_error(bad, 401, "invalid_client")


def test_a_wrong_secret_or_an_unknown_client_is_invalid_client(gw):
    for auth in [(BATCH_ID, "wrong-secret"), ("no-such-client", "whatever")]:
        r = token_post(gw, {"grant_type": "client_credentials"}, auth=auth)
        oauth_error(r, 401, "invalid_client")
        assert r.headers.get("www-authenticate", "").startswith("Basic"), (auth, r.headers)
    for client_id, secret in [(BATCH_ID, "wrong-secret"), ("no-such-client", "whatever")]:
        r = token_post(gw, {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret})
        oauth_error(r, 401, "invalid_client")
    with pytest.raises(OAuthError) as info:  # authlib sees the same
        cc_token(gw, secret="wrong-secret")
    assert info.value.error == "invalid_client"


def test_an_unsupported_grant_type(gw):
    r = token_post(gw, {"grant_type": "password", "username": "alice", "password": "pw"}, auth=(BATCH_ID, BATCH_SECRET))
    oauth_error(r, 400, "unsupported_grant_type")


def test_an_unknown_scope_is_invalid_scope(gw):
    r = token_post(gw, {"grant_type": "client_credentials", "scope": "admin"}, auth=(BATCH_ID, BATCH_SECRET))
    oauth_error(r, 400, "invalid_scope")


def test_a_public_client_cannot_use_client_credentials(gw):
    client = register(gw)
    r = token_post(gw, {"grant_type": "client_credentials", "client_id": client["client_id"]})
    oauth_error(r, (400, 401), ("unauthorized_client", "invalid_client"))


def test_a_parameter_sent_twice_is_invalid_request(gw):
    r = token_post(gw, None, auth=(BATCH_ID, BATCH_SECRET), content=b"grant_type=client_credentials&grant_type=client_credentials",
                   headers={"content-type": "application/x-www-form-urlencoded"})
    oauth_error(r, 400, "invalid_request")


# -- dynamic registration -------------------------------------------------------------------------


def test_registering_a_public_client(gw):
    meta = {
        "client_name": "cli",
        "redirect_uris": ["http://127.0.0.1:7777/cb"],
        "token_endpoint_auth_method": "none",
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
    }
    before = int(time.time())
    r = httpx.post(ep(gw, "register"), json=meta, timeout=support.TIMEOUT)
    assert r.status_code == 201, r.text
    body = r.json()
    assert isinstance(body["client_id"], str) and body["client_id"], body
    assert before - 5 <= body["client_id_issued_at"] <= time.time() + 5, body
    for k, v in meta.items():
        assert body[k] == v, (k, body)
    assert "client_secret" not in body, body


@pytest.mark.parametrize("uri", ["http://127.0.0.1:7777/cb", "http://localhost:8080/cb", "http://[::1]:9000/cb",
                                 "https://app.example.com/cb", "com.example.app:/cb"])
def test_registration_accepts_https_loopback_and_private_use_redirect_uris(gw, uri):
    assert register(gw, redirect_uris=[uri])["redirect_uris"] == [uri]


@pytest.mark.parametrize("uri", ["http://evil.example.com/cb", "http://127.0.0.1:7777/cb#frag", "http://localhost.evil.example.com/cb"])
def test_registration_refuses_a_bad_redirect_uri(gw, uri):
    r = httpx.post(ep(gw, "register"), json={"client_name": "bad", "redirect_uris": [uri], "token_endpoint_auth_method": "none",
                                              "grant_types": ["authorization_code"], "response_types": ["code"]}, timeout=support.TIMEOUT)
    oauth_error(r, 400, "invalid_redirect_uri")


def test_registration_refuses_a_confidential_client(gw):
    r = httpx.post(ep(gw, "register"), json={"client_name": "conf", "redirect_uris": [APP_REDIRECT], "token_endpoint_auth_method": "client_secret_basic",
                                              "grant_types": ["authorization_code"], "response_types": ["code"]}, timeout=support.TIMEOUT)
    oauth_error(r, 400, "invalid_client_metadata")


# -- authorize: refusals --------------------------------------------------------------------------


def test_authorize_with_an_unknown_client_is_a_400_page(gw):
    _, challenge = pkce()
    r = httpx.get(authorize_url(gw, "no-such-client", challenge, "st"), timeout=support.TIMEOUT)
    assert r.status_code == 400 and "location" not in r.headers, (r.status_code, r.headers)


def test_authorize_with_an_unregistered_redirect_uri_is_a_400_page(gw):
    client = register(gw)
    _, challenge = pkce()
    r = httpx.get(authorize_url(gw, client["client_id"], challenge, "st", redirect_uri="http://127.0.0.1:7777/not-registered"), timeout=support.TIMEOUT)
    assert r.status_code == 400 and "location" not in r.headers, (r.status_code, r.headers)


@pytest.mark.parametrize("case", ["no-challenge", "plain"])
def test_authorize_without_s256_pkce_redirects_invalid_request(gw, case):
    client = register(gw)
    verifier, challenge = pkce()
    url = (authorize_url(gw, client["client_id"], None, "st-1", method=None) if case == "no-challenge"
           else authorize_url(gw, client["client_id"], verifier, "st-1", method="plain"))
    r = httpx.get(url, timeout=support.TIMEOUT)
    assert r.status_code == 302 and r.headers["location"].startswith(APP_REDIRECT + "?"), (r.status_code, r.headers)
    params = parse_redirect(r)
    assert params["error"] == "invalid_request" and params["state"] == "st-1" and "code" not in params, params
    assert params.get("iss", gw.base) == gw.base, params


# -- authorize: sign-in and consent ---------------------------------------------------------------


def test_sign_in_and_consent_issue_a_code_for_the_user(gw):
    name = f"Test-CLI-{secrets.token_hex(3)}"
    client = register(gw, name=name)
    with Browser() as b:
        page, verifier, state = consent_page(gw, b, client)
        assert any(u.startswith(gw.base + CALLBACK_PATH) for _, u, _ in b.history), b.trail()
        assert name in page.text and "alice" in page.text, page.text
        assert page.headers.get("set-cookie"), page.headers
        (form,) = [f for f in html_forms(page.text) if any(b_.get("name") == "decision" for b_ in f["buttons"])]
        assert form["attrs"].get("method", "").lower() == "post", form
        assert urllib.parse.urlsplit(urllib.parse.urljoin(str(page.url), form["attrs"]["action"])).path == OAUTH + "/authorize", form
        hidden = {i.get("name"): i.get("value") for i in form["inputs"] if i.get("type", "").lower() == "hidden"}
        assert hidden.get("consent") and hidden.get("csrf"), form
        assert {b_.get("value") for b_ in form["buttons"] if b_.get("name") == "decision"} == {"allow", "deny"}, form
        done = b.consent(page, "allow")
    assert done.status_code == 302 and done.headers["location"].startswith(APP_REDIRECT + "?"), (done.status_code, done.headers, done.text[:300])
    params = parse_redirect(done)
    assert params["code"] and params["state"] == state and params["iss"] == gw.base, params
    tok = exchange(gw, client, params["code"], verifier)
    assert tok["access_token"].startswith("pcat_") and tok["refresh_token"].startswith("pcrt_"), tok
    assert tok["token_type"] == "Bearer" and tok["expires_in"] == ACCESS_SECONDS and tok["scope"] == SCOPE, tok
    assert_served(gw, tok["access_token"])
    info = introspect(gw, tok["access_token"], client_id=client["client_id"])
    assert info["active"] is True and info["client_id"] == client["client_id"] and info.get("sub"), info


def test_the_code_exchange_response_is_not_cacheable(gw):
    client = register(gw)
    code, verifier = sign_in(gw, client)
    r = token_post(gw, {"grant_type": "authorization_code", "code": code, "redirect_uri": APP_REDIRECT,
                        "code_verifier": verifier, "client_id": client["client_id"]})
    assert r.status_code == 200 and r.json()["refresh_token"].startswith("pcrt_"), r.text


def test_consent_deny_is_access_denied(gw):
    client = register(gw)
    with Browser() as b:
        page, _, state = consent_page(gw, b, client)
        r = b.consent(page, "deny")
    assert r.status_code == 302 and r.headers["location"].startswith(APP_REDIRECT + "?"), (r.status_code, r.headers)
    params = parse_redirect(r)
    assert params["error"] == "access_denied" and params["state"] == state and "code" not in params, params


def test_consent_without_the_cookie_or_with_a_wrong_csrf_is_refused(gw):
    client = register(gw)
    with Browser() as b:
        page, _, _ = consent_page(gw, b, client)
        with Browser() as other:  # the right form, posted from a browser without the cookie
            r = other.consent(page, "allow")
        assert r.status_code == 400 and "code=" not in r.headers.get("location", ""), (r.status_code, r.headers)
        r = b.consent(page, "allow", csrf="not-the-csrf-token")
        assert r.status_code == 400 and "code=" not in r.headers.get("location", ""), (r.status_code, r.headers)


def test_sign_in_without_mfa_works_here(gw):
    client = register(gw)
    tok = user_tokens(gw, client, login="bob", mfa=False)
    assert_served(gw, tok["access_token"])


# -- authorization code and refresh token rules -----------------------------------------------


def test_a_code_works_once_and_its_replay_revokes_the_tokens(gw):
    client = register(gw)
    code, verifier = sign_in(gw, client)
    tok = exchange(gw, client, code, verifier)
    assert_served(gw, tok["access_token"])
    r = token_post(gw, {"grant_type": "authorization_code", "code": code, "redirect_uri": APP_REDIRECT,
                        "code_verifier": verifier, "client_id": client["client_id"]})
    oauth_error(r, 400, "invalid_grant")
    wait_invalid(gw, tok["access_token"], within=6.0)
    r = token_post(gw, {"grant_type": "refresh_token", "refresh_token": tok["refresh_token"], "client_id": client["client_id"]})
    oauth_error(r, 400, "invalid_grant")


def test_a_wrong_code_verifier_is_invalid_grant(gw):
    client = register(gw)
    code, _ = sign_in(gw, client)
    r = token_post(gw, {"grant_type": "authorization_code", "code": code, "redirect_uri": APP_REDIRECT,
                        "code_verifier": pkce()[0], "client_id": client["client_id"]})
    oauth_error(r, 400, "invalid_grant")


def test_another_redirect_uri_at_the_token_endpoint_is_invalid_grant(gw):
    client = register(gw)  # both APP_REDIRECT and APP_REDIRECT_2 are registered
    code, verifier = sign_in(gw, client, redirect_uri=APP_REDIRECT)
    r = token_post(gw, {"grant_type": "authorization_code", "code": code, "redirect_uri": APP_REDIRECT_2,
                        "code_verifier": verifier, "client_id": client["client_id"]})
    oauth_error(r, 400, "invalid_grant")


def test_refresh_rotates_and_a_reused_refresh_token_revokes_the_family(gw):
    client = register(gw)
    first = user_tokens(gw, client)
    with public_client(client["client_id"]) as o:
        second = dict(o.refresh_token(ep(gw, "token"), refresh_token=first["refresh_token"]))
    assert second["access_token"].startswith("pcat_") and second["refresh_token"].startswith("pcrt_"), second
    assert second["access_token"] != first["access_token"] and second["refresh_token"] != first["refresh_token"], second
    assert_served(gw, second["access_token"])
    with public_client(client["client_id"]) as o:
        third = dict(o.refresh_token(ep(gw, "token"), refresh_token=second["refresh_token"]))
    assert third["refresh_token"] not in (first["refresh_token"], second["refresh_token"]), third
    # The used one again: refused, and the whole family with it, the newest refresh token too.
    r = token_post(gw, {"grant_type": "refresh_token", "refresh_token": first["refresh_token"], "client_id": client["client_id"]})
    oauth_error(r, 400, "invalid_grant")
    r = token_post(gw, {"grant_type": "refresh_token", "refresh_token": third["refresh_token"], "client_id": client["client_id"]})
    oauth_error(r, 400, "invalid_grant")


# -- revocation and introspection -----------------------------------------------------------------


def test_revoking_an_access_token_refuses_it_at_once(gw):
    tok = cc_token(gw)["access_token"]
    assert_served(gw, tok)
    revoke(gw, tok, auth=(BATCH_ID, BATCH_SECRET), hint="access_token")
    assert_invalid_token(gw, tok)
    revoke(gw, tok, auth=(BATCH_ID, BATCH_SECRET))  # again: still 200 {}
    revoke(gw, "pcat_" + secrets.token_urlsafe(32), auth=(BATCH_ID, BATCH_SECRET))  # never existed
    assert introspect(gw, tok, auth=(BATCH_ID, BATCH_SECRET)) == {"active": False}


def test_revoking_another_clients_token_does_nothing(gw):
    client = register(gw)
    user = user_tokens(gw, client)["access_token"]
    batch = cc_token(gw)["access_token"]
    revoke(gw, user, auth=(BATCH_ID, BATCH_SECRET))
    revoke(gw, batch, client_id=client["client_id"])
    assert_served(gw, user)
    assert_served(gw, batch)


def test_introspection(gw):
    tok = cc_token(gw)["access_token"]
    before = int(time.time())
    info = introspect(gw, tok, auth=(BATCH_ID, BATCH_SECRET))
    assert info["active"] is True and info["client_id"] == BATCH_ID and info["scope"] == SCOPE, info
    assert info["token_type"] == "Bearer" and info["iss"] == gw.base, info
    assert abs(info["exp"] - info["iat"] - ACCESS_SECONDS) <= 1 and info["iat"] <= before + 5, info
    client = register(gw)
    user = user_tokens(gw, client)["access_token"]
    mine = introspect(gw, user, client_id=client["client_id"])
    assert mine["active"] is True and mine["client_id"] == client["client_id"] and mine.get("sub"), mine
    assert introspect(gw, user, auth=(BATCH_ID, BATCH_SECRET)) == {"active": False}  # another client's
    assert introspect(gw, tok, client_id=client["client_id"]) == {"active": False}
    assert introspect(gw, "pcat_" + secrets.token_urlsafe(32), auth=(BATCH_ID, BATCH_SECRET)) == {"active": False}
    revoke(gw, tok, auth=(BATCH_ID, BATCH_SECRET))
    assert introspect(gw, tok, auth=(BATCH_ID, BATCH_SECRET)) == {"active": False}


# -- the clients CLI ------------------------------------------------------------------------------


def _list_line(gw, client_id: str) -> str:
    r = run_cli(gw, "clients", "list")
    assert r.returncode == 0, r
    lines = [line for line in r.stdout.splitlines() if client_id in line]
    assert len(lines) == 1, r.stdout
    return lines[0]


def test_cli_confidential_client_gets_tokens_until_revoked(gw):
    name = f"svc-{secrets.token_hex(4)}"
    r = run_cli(gw, "clients", "create", "--name", name, "--providers", "mock", "--proxies", "default")
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("client_id: pcc_") and lines[1].startswith("client_secret: pccs_"), r.stdout
    client_id, secret = lines[0].removeprefix("client_id: "), lines[1].removeprefix("client_secret: ")
    line = _list_line(gw, client_id)
    assert name in line and "active" in line and "revoked" not in line and secret not in line, line

    tok = cc_token(gw, client_id, secret)["access_token"]
    assert_served(gw, tok)

    r = run_cli(gw, "clients", "revoke", client_id)
    assert r.returncode == 0 and r.stdout.strip() == f"revoked {client_id}", r
    line = _list_line(gw, client_id)
    assert "revoked" in line and secret not in line, line
    wait_invalid(gw, tok, within=6.0)  # client lookups are cached up to 5 s
    oauth_error(token_post(gw, {"grant_type": "client_credentials"}, auth=(client_id, secret)), 401, "invalid_client")


def openai_key_used(gw, upstream, token: str) -> str:
    """Chat as `token` with `openai:`; the key the upstream was called with."""
    m = secrets.token_hex(6)
    r = support.sdk(gw.base + "/v1", api_key=token).chat.completions.create(
        model="openai:gpt-4o-mini", messages=[{"role": "user", "content": f"key? {m}"}])
    assert m in r.choices[0].message.content, r
    return (upstream.find(m).header("authorization") or "").removeprefix("Bearer ")


def test_a_user_token_draws_on_the_users_group_provider_key(gw, upstream):
    client = register(gw)
    alice = user_tokens(gw, client, login="alice")["access_token"]  # alice is in oidc-team
    assert openai_key_used(gw, upstream, alice) == TEAM_OPENAI_KEY
    bob = user_tokens(gw, client, login="bob")["access_token"]
    with pytest.raises(openai.PermissionDeniedError) as info:
        openai_key_used(gw, upstream, bob)
    support.assert_error_shape(support.error_json(info.value), 403, code="provider_not_allowed")


def test_cli_client_with_a_provider_key_mapping(gw, upstream):
    name = f"mapped-{secrets.token_hex(4)}"
    r = run_cli(gw, "clients", "create", "--name", name, "--provider-keys", "cli-openai")
    assert r.returncode == 0, r
    client_id, secret = (line.split(": ", 1)[1] for line in r.stdout.splitlines())
    assert "provider_keys=cli-openai" in _list_line(gw, client_id)
    tok = cc_token(gw, client_id, secret)["access_token"]
    assert openai_key_used(gw, upstream, tok) == CLI_OPENAI_KEY
    # Client-credentials tokens do not inherit anyone's group keys, nor the mock without `providers`.
    with pytest.raises(openai.PermissionDeniedError):
        chat(gw, tok)
    r = run_cli(gw, "clients", "create", "--name", name, "--provider-keys", "no-such-key")
    assert r.returncode != 0 and "unknown provider key `no-such-key`" in r.stderr, r


def key_used_within(gw, upstream, token: str, want: str | None, within: float = 7.0):
    """Other nodes (here: the gateway, for the CLI's writes) reread stored provider keys every 5 s."""
    deadline = time.monotonic() + within
    while True:
        try:
            got = openai_key_used(gw, upstream, token)
        except openai.PermissionDeniedError:
            got = None
        if got == want or time.monotonic() > deadline:
            assert got == want, (got, want)
            return
        time.sleep(0.25)


def test_cli_stores_a_sealed_provider_key_that_the_gateway_picks_up(gw, upstream):
    r = run_cli(gw, "provider-keys", "set", "--name", "cli-vault", "--provider", "openai", stdin="sk-x\n")
    assert r.returncode != 0 and "PORTCULLIS_SECRETS_KEY" in r.stderr, r
    r = run_cli(gw, "provider-keys", "set", "--name", "cli-vault", "--provider", "openai", stdin=VAULT_OPENAI_KEY + "\n", env=SECRETS_ENV)
    assert r.returncode == 0 and "stored provider key `cli-vault`" in r.stdout, r
    r = run_cli(gw, "provider-keys", "list")
    assert r.returncode == 0 and "cli-vault" in r.stdout and "…" + VAULT_OPENAI_KEY[-4:] in r.stdout, r
    assert VAULT_OPENAI_KEY not in r.stdout
    name = f"vault-{secrets.token_hex(4)}"
    r = run_cli(gw, "clients", "create", "--name", name, "--provider-keys", "cli-vault")
    assert r.returncode == 0, r
    client_id, secret = (line.split(": ", 1)[1] for line in r.stdout.splitlines())
    tok = cc_token(gw, client_id, secret)["access_token"]
    key_used_within(gw, upstream, tok, VAULT_OPENAI_KEY)
    r = run_cli(gw, "provider-keys", "delete", "cli-vault")
    assert r.returncode == 0 and r.stdout.strip() == "deleted cli-vault", r
    key_used_within(gw, upstream, tok, None)
    assert run_cli(gw, "provider-keys", "delete", "cli-vault").returncode != 0


def test_cli_public_client(gw):
    name = f"pub-{secrets.token_hex(4)}"
    r = run_cli(gw, "clients", "create", "--name", name, "--providers", "mock", "--redirect-uri", APP_REDIRECT, "--public")
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("client_id: pcc_"), r.stdout
    client_id = lines[0].removeprefix("client_id: ")
    line = _list_line(gw, client_id)
    assert name in line and "active" in line, line
    r = run_cli(gw, "clients", "revoke", name)  # by name
    assert r.returncode == 0 and r.stdout.strip() == f"revoked {client_id}", r
    assert "revoked" in _list_line(gw, client_id)


def test_an_apps_user_token_cannot_change_the_users_provider_keys(gw):
    """An app the user consented to acts as the user, but must not swap in a provider key of an
    account its owner reads: changing personal keys takes the user's own IdP token."""
    access = user_tokens(gw, register(gw))["access_token"]
    headers = {"authorization": f"Bearer {access}"}
    listed = httpx.get(gw.base + "/v1/provider-keys", headers=headers, timeout=support.TIMEOUT)
    assert listed.status_code == 200 and listed.json()["data"] == [], listed.text
    for method in ("PUT", "DELETE"):
        r = httpx.request(method, gw.base + "/v1/provider-keys/openai", json={"api_key": "sk-app-owner-5a5a"},
                          headers=headers, timeout=support.TIMEOUT)
        assert r.status_code == 403, r.text
        support.assert_error_shape(r.json(), 403, code="personal_keys_need_idp_token")
    listed = httpx.get(gw.base + "/v1/provider-keys", headers=headers, timeout=support.TIMEOUT)
    assert listed.json()["data"] == [], listed.text
