"""JWT bearer auth against a real OpenID Connect IdP (tests/idp/server.mjs, oidc-provider).

One IdP and one dedicated gateway (`[[auth.oidc]] name = "corp"` trusting that IdP) for the
module. Tokens come from the IdP's token endpoint (client_credentials, via authlib) and go to the
gateway through the official `openai` SDK and httpx: valid ones (RS256, ES256, explicit resource
and scope) are served; expired, wrong-audience, tampered, `alg: none`, HS256 alg-confusion,
foreign-IdP, wrong-`iss` (a twin IdP signing with the trusted keys) and garbage tokens are 401
`invalid_token` with `WWW-Authenticate: Bearer error="invalid_token"`; the `secure`
proxy wants an MFA `amr`; a key rotation at the IdP is picked up on the next request; a group
named in the token's `groups` claim brings its rate limit.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import httpx
import openai
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicNumbers

import support
from idp import RESOURCE, Idp, b64url_decode, b64url_encode, decode_jwt

ISSUER_NAME = "corp"
AUDIENCE = "portcullis"
SECURE = "/v1/model-router/secure"
MSG = [{"role": "user", "content": "hello oidc"}]


def render_config(idp_port: int):
    def render(port: int, admin_port: int, workdir) -> str:
        return f"""# Written by tests/clients/test_oidc.py.
{support.server_section(port, admin_port, workdir)}
[egress]
allow_hosts = ["127.0.0.1", "localhost"]

[providers.mock]
kind = "mock"
models = ["echo"]

[routing.tiers]
simple = ["mock:echo"]

[[auth.oidc]]
name = "{ISSUER_NAME}"
issuer = "http://127.0.0.1:{idp_port}"
audiences = ["{AUDIENCE}"]
algorithms = ["RS256", "ES256"]
leeway_seconds = 0
proxies = ["default", "secure"]
providers = ["mock"]
groups_claim = "groups"
limits = [{{ window = "minute", requests = 30 }}]

[proxies.secure]
require_mfa = true

[groups.oidc-limited]
limits = [{{ window = "minute", requests = 2 }}]

[groups.oidc-team]

[admin]
groups = ["oidc-team"]              # IdP users in this group may use the admin API (with MFA)
"""

    return render


@pytest.fixture(scope="module")
def idp(workdir):
    i = Idp(workdir / "oidc-idp", name="idp").start()
    yield i
    i.stop()


@pytest.fixture(scope="module")
def gw(idp, workdir):
    import conftest

    with conftest.dedicated_gateway("oidc", workdir / "oidc", render_config(idp.port)) as g:
        yield g


def chat(base_url: str, token: str, text: str = "hello oidc"):
    return support.sdk(base_url, api_key=token).chat.completions.create(
        model="mock:echo", messages=[{"role": "user", "content": text}]
    )


def assert_served(base_url: str, token: str):
    m = support.marker()
    r = chat(base_url, token, f"echo {m}")
    assert r.choices[0].message.content.endswith(f"You said: echo {m}"), r


def assert_401(base_url: str, token: str, code: str = "invalid_token") -> openai.AuthenticationError:
    with pytest.raises(openai.AuthenticationError) as info:
        chat(base_url, token)
    e = info.value
    assert e.status_code == 401
    support.assert_error_shape(support.error_json(e), code=code)
    www = e.response.headers.get("www-authenticate", "")
    assert www.startswith("Bearer") and 'error="invalid_token"' in www, f"WWW-Authenticate: {www!r}"
    return e


# -- the IdP itself (no gateway needed) -------------------------------------------------------


def test_idp_issues_the_token_shapes_the_gateway_is_tested_with(idp):
    meta = idp.metadata()
    assert meta["issuer"] == idp.issuer and meta["jwks_uri"].startswith(idp.issuer + "/")
    expect = {
        "app-mfa": ("RS256", AUDIENCE, ["pwd", "mfa"], ["oidc-team"]),
        "app-nomfa": ("RS256", AUDIENCE, ["pwd"], ["oidc-team"]),
        "app-es256": ("ES256", AUDIENCE, ["pwd", "mfa"], None),
        "app-short": ("RS256", AUDIENCE, ["pwd", "mfa"], None),
        "app-other-aud": ("RS256", "someone-else", ["pwd", "mfa"], None),
        "app-limited": ("RS256", AUDIENCE, ["pwd", "mfa"], ["oidc-limited"]),
    }
    kids = {k["kid"]: k for k in idp.jwks()["keys"]}
    for client, (alg, aud, amr, groups) in expect.items():
        header, claims = decode_jwt(idp.token(client))
        assert header["alg"] == alg and header["typ"] == "at+jwt", (client, header)
        assert kids[header["kid"]]["alg"] == alg, (client, header, kids)
        assert claims["iss"] == idp.issuer and claims["aud"] == aud, (client, claims)
        assert claims["sub"] == claims["client_id"] == client, (client, claims)
        assert claims["amr"] == amr and claims.get("groups") == groups, (client, claims)
        ttl = claims["exp"] - claims["iat"]
        assert ttl == (2 if client == "app-short" else 600), (client, claims)
    # Explicit resource and scope, by client_secret_post: same audience, plus the scope.
    _, claims = decode_jwt(idp.token("app-mfa", auth_method="client_secret_post", resource=RESOURCE, scope="llm:proxy"))
    assert claims["aud"] == AUDIENCE and claims["scope"] == "llm:proxy", claims


# -- accepted tokens ----------------------------------------------------------------------------


def test_an_rs256_token_chats_and_lists_models(idp, gw):
    token = idp.token("app-mfa")
    assert_served(gw.base + "/v1", token)
    ids = [m.id for m in support.sdk(gw.base + "/v1", api_key=token).models.list()]
    assert "auto" in ids and any(i.startswith("mock:") for i in ids), ids


def test_an_es256_token_is_served(idp, gw):
    assert_served(gw.base + "/v1", idp.token("app-es256"))


def test_a_token_requested_with_resource_and_scope_is_served(idp, gw):
    assert_served(gw.base + "/v1", idp.token("app-mfa", auth_method="client_secret_post", resource=RESOURCE, scope="llm:proxy"))


def test_usage_with_a_token(idp, gw):
    token = idp.token("app-mfa")
    assert_served(gw.base + "/v1", token)
    r = httpx.get(gw.base + "/v1/usage", headers=support.auth(token), timeout=support.TIMEOUT)
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body, dict) and body.get("object") == "usage", body


# -- MFA ----------------------------------------------------------------------------------------


def test_the_secure_proxy_requires_an_mfa_amr(idp, gw):
    nomfa = idp.token("app-nomfa")
    assert_served(gw.base + "/v1", nomfa)  # the default proxy does not ask for MFA
    assert_401(gw.base + SECURE, nomfa, code="mfa_required")
    assert_served(gw.base + SECURE, idp.token("app-mfa"))


# -- refused tokens -----------------------------------------------------------------------------


def test_an_expired_token_is_refused(idp, gw):
    token = idp.token("app-short")
    assert_served(gw.base + "/v1", token)  # valid for 2 s: the refusal below is the expiry
    exp = decode_jwt(token)[1]["exp"]
    time.sleep(max(0.0, exp + 1.1 - time.time()))
    assert_401(gw.base + "/v1", token)


def test_a_token_for_another_audience_is_refused(idp, gw):
    assert_401(gw.base + "/v1", idp.token("app-other-aud"))


def test_a_token_with_a_flipped_signature_character_is_refused(idp, gw):
    token = idp.token("app-mfa")
    head, body, sig = token.split(".")
    i = len(sig) // 2  # the middle: every bit of it is significant (the last char has padding bits)
    sig = sig[:i] + ("A" if sig[i] != "A" else "B") + sig[i + 1 :]
    assert b64url_decode(sig) != b64url_decode(token.split(".")[2])
    assert_401(gw.base + "/v1", f"{head}.{body}.{sig}")


def test_an_alg_none_token_is_refused(idp, gw):
    _, body, _ = idp.token("app-mfa").split(".")
    head = b64url_encode(json.dumps({"alg": "none", "typ": "at+jwt"}).encode())
    assert_401(gw.base + "/v1", f"{head}.{body}.")


def _rsa_public_secrets(idp: Idp) -> dict[str, bytes]:
    """The IdP's RSA public key in the forms an alg-confusion attacker would try as HMAC key."""
    (jwk,) = [k for k in idp.jwks()["keys"] if k["kty"] == "RSA"]
    n = int.from_bytes(b64url_decode(jwk["n"]), "big")
    e = int.from_bytes(b64url_decode(jwk["e"]), "big")
    key = RSAPublicNumbers(e, n).public_key()
    public_jwk = {k: jwk[k] for k in ("kty", "n", "e")}
    return {
        "kid": jwk["kid"].encode(),
        "spki-pem": key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "pkcs1-pem": key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1),
        "jwk-json": json.dumps(public_jwk, separators=(",", ":")).encode(),
    }


@pytest.mark.parametrize("form", ["spki-pem", "pkcs1-pem", "jwk-json"])
def test_an_hs256_token_keyed_with_the_rsa_public_key_is_refused(idp, gw, form):
    secrets = _rsa_public_secrets(idp)
    _, body, _ = idp.token("app-mfa").split(".")
    head = b64url_encode(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": secrets["kid"].decode()}).encode())
    mac = hmac.new(secrets[form], f"{head}.{body}".encode(), hashlib.sha256).digest()
    assert_401(gw.base + "/v1", f"{head}.{body}.{b64url_encode(mac)}")


def test_a_token_from_an_unconfigured_idp_is_refused(idp, gw, workdir):
    other = Idp(workdir / "oidc-idp-other", name="other").start()
    try:
        token = other.token("app-mfa")
        assert decode_jwt(token)[1]["iss"] != idp.issuer
        assert_401(gw.base + "/v1", token)
    finally:
        other.stop()


def test_a_token_signed_with_the_trusted_keys_but_another_issuer_is_refused(idp, gw, workdir):
    """A twin IdP on another port signs with the trusted IdP's own keys: the signature verifies
    against the configured JWKS, so only the `iss` check can refuse it."""
    assert_served(gw.base + "/v1", idp.token("app-mfa"))  # the gateway has these keys cached
    twin = Idp(workdir / "oidc-idp-twin", name="twin").start(keys_from=idp)
    try:
        token = twin.token("app-mfa")
        header, claims = decode_jwt(token)
        assert header["kid"] in {k["kid"] for k in idp.jwks()["keys"]} and claims["iss"] == twin.issuer != idp.issuer
        assert_401(gw.base + "/v1", token)
    finally:
        twin.stop()


def test_garbage_that_looks_like_a_jwt_is_refused(gw):
    assert_401(gw.base + "/v1", "eyJhbGciOi.x.y")
    r = httpx.get(gw.base + "/v1/models", headers=support.auth("eyJhbGciOi.x.y"), timeout=support.TIMEOUT)
    assert r.status_code == 401, r.text
    support.assert_error_shape(r.json(), code="invalid_token")
    assert 'error="invalid_token"' in r.headers.get("www-authenticate", "")


# -- key rotation ---------------------------------------------------------------------------------


def test_a_key_rotation_at_the_idp_is_picked_up_on_the_next_request(idp, gw):
    old = idp.token("app-mfa")
    assert_served(gw.base + "/v1", old)  # the gateway has the current keys cached
    old_kid = decode_jwt(old)[0]["kid"]
    idp.restart()  # same issuer and port, new keys
    new = idp.token("app-mfa")
    assert decode_jwt(new)[0]["kid"] != old_kid
    assert_served(gw.base + "/v1", new)  # unknown kid: the gateway refetches the JWKS
    assert_served(gw.base + "/v1", idp.token("app-es256"))
    assert_401(gw.base + "/v1", old)  # signed by a key the IdP no longer publishes


# -- groups from the token ------------------------------------------------------------------------


def test_a_group_from_the_groups_claim_brings_its_rate_limit(idp, gw):
    # Minute windows are aligned to the clock: do not straddle a boundary.
    left = 60.0 - (time.time() % 60.0)
    if left < 4.0:
        time.sleep(left + 0.2)
    token = idp.token("app-limited")
    assert_served(gw.base + "/v1", token)
    assert_served(gw.base + "/v1", token)
    with pytest.raises(openai.RateLimitError) as info:
        chat(gw.base + "/v1", token)
    assert info.value.status_code == 429
    support.assert_error_shape(support.error_json(info.value), code="rate_limit_exceeded")


# -- IdP-wide rules -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict_gw(idp, workdir):
    """A gateway whose IdP entry itself requires MFA and the `llm:proxy` scope."""
    import conftest

    base = render_config(idp.port)

    def render(port, admin_port, d):
        text = base(port, admin_port, d)
        return text.replace("leeway_seconds = 0\n", 'leeway_seconds = 0\nrequire_mfa = true\nrequired_scope = "llm:proxy"\n', 1)

    with conftest.dedicated_gateway("oidc-strict", workdir / "oidc-strict", render) as g:
        yield g


def test_an_idp_that_requires_mfa_and_a_scope(idp, strict_gw):
    base = strict_gw.base + "/v1"
    scoped = {"auth_method": "client_secret_post", "resource": RESOURCE, "scope": "llm:proxy"}
    assert_served(base, idp.token("app-mfa", **scoped))
    assert_401(base, idp.token("app-nomfa", **scoped), code="mfa_required")
    with pytest.raises(openai.PermissionDeniedError) as info:
        chat(base, idp.token("app-mfa"))  # no `scope` requested: the token lacks llm:proxy
    support.assert_error_shape(support.error_json(info.value), code="insufficient_scope")


# -- IdP admins -----------------------------------------------------------------------------------


def test_idp_users_in_an_admin_group_with_mfa_use_the_admin_api(idp, gw):
    def admin_get(token):
        return httpx.get(gw.admin + "/admin/api/keys", headers=support.auth(token), timeout=support.TIMEOUT)

    r = admin_get(idp.token("app-mfa"))  # groups ["oidc-team"], amr has "mfa"
    assert r.status_code == 200 and r.json()["object"] == "list", r.text
    r = admin_get(idp.token("app-nomfa"))  # in the group, no MFA
    assert r.status_code == 401 and r.json()["error"]["code"] == "mfa_required", r.text
    r = admin_get(idp.token("app-es256"))  # MFA, not in the group
    assert r.status_code == 403 and r.json()["error"]["code"] == "not_admin", r.text
