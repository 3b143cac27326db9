/**
 * A real OpenID Connect provider (oidc-provider) for Portcullis's end-to-end JWT tests.
 *
 *   node tests/idp/server.mjs --port P [--keys-out FILE] [--keys-in FILE] [--rp-redirect URL ...]
 *
 * Listens on 127.0.0.1:P with issuer exactly `http://127.0.0.1:P` (discovery at
 * /.well-known/openid-configuration, keys at /jwks) and prints `ready` once listening. It exits
 * when its stdin closes (the test process died) or on SIGTERM/SIGINT.
 *
 * Every start makes fresh signing keys (RSA 2048 for RS256, P-256 for ES256, random `kid`s), so
 * restarting on the same port is a key rotation under an unchanged issuer. `--keys-out FILE` writes
 * the private JWKS to FILE; `--keys-in FILE` uses FILE's keys instead of fresh ones (a second IdP
 * with another issuer but the same keys: tokens whose signature verifies and whose `iss` is wrong).
 *
 * Machine clients (CLIENTS below) use the client_credentials grant. Their access tokens are JWTs (RFC 9068, header
 * `typ: at+jwt`) through the resourceIndicators feature; a client need not send `resource`: its
 * default (RESOURCE below) applies, and sending `resource=RESOURCE` works the same. Claims: `iss`,
 * `sub` = `client_id` = the client's id, `aud` (a string), `iat`, `exp`, `jti`, `scope` (only when
 * the request asked for a scope, e.g. `llm:proxy`), plus the client's extra claims (`amr`,
 * `groups`) from CLIENTS.
 *
 * User sign-in (authorization code, for a relying party such as Portcullis's own /authorize):
 * with `--rp-redirect URL` (repeatable) there is also the confidential client `portcullis-login`
 * (secret `portcullis-login-secret`, client_secret_basic or client_secret_post; grant
 * authorization_code; response_type code; PKCE as oidc-provider requires it) with those redirect
 * URIs. The login page (`GET /interaction/:uid`) is a plain HTML form posting `login`, `password`
 * and the checkbox `mfa` (value `1`) to `/interaction/:uid/login`. Any password but `wrong` signs
 * in as account `login` (`wrong` re-renders the form, 200, with an error); `amr` is
 * ["pwd","otp","mfa"] when `mfa` is checked, else ["pwd"]; consent to `openid` is granted at once.
 * The ID token carries `iss`, `aud` = `portcullis-login`, `sub` = login, `nonce`, `amr`,
 * `email` = `<login>@example.com` and `groups` (["oidc-team"] for `alice`, [] for anyone else).
 */

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import { Provider, errors } from 'oidc-provider';

/** The resource indicator every client gets by default; an absolute URI as RFC 8707 requires. */
export const RESOURCE = 'urn:portcullis';
const SCOPE = 'llm:proxy';

/**
 * Test clients. Secret = `<id>-secret`; token_endpoint_auth_method client_secret_basic, which
 * oidc-provider also accepts as client_secret_post (both are "client secret" methods).
 */
const CLIENTS = {
  'app-mfa': { alg: 'RS256', aud: 'portcullis', claims: { amr: ['pwd', 'mfa'], groups: ['oidc-team'] } },
  'app-nomfa': { alg: 'RS256', aud: 'portcullis', claims: { amr: ['pwd'], groups: ['oidc-team'] } },
  'app-es256': { alg: 'ES256', aud: 'portcullis', claims: { amr: ['pwd', 'mfa'] } },
  'app-short': { alg: 'RS256', aud: 'portcullis', ttl: 2, claims: { amr: ['pwd', 'mfa'] } },
  'app-other-aud': { alg: 'RS256', aud: 'someone-else', claims: { amr: ['pwd', 'mfa'] } },
  'app-limited': { alg: 'RS256', aud: 'portcullis', claims: { amr: ['pwd', 'mfa'], groups: ['oidc-limited'] } },
};
const DEFAULT_TTL = 600;

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    'keys-in': { type: 'string' },
    'keys-out': { type: 'string' },
    'rp-redirect': { type: 'string', multiple: true },
  },
});
const port = Number(args.port);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  process.stderr.write('usage: node server.mjs --port PORT [--keys-out FILE] [--keys-in FILE] [--rp-redirect URL ...]\n');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;

function freshKey(type, alg, options) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), kid: `${alg.toLowerCase()}-${randomBytes(8).toString('hex')}`, alg, use: 'sig' };
}
const jwks = args['keys-in'] ? JSON.parse(readFileSync(args['keys-in'], 'utf8')) : {
  keys: [
    freshKey('rsa', 'RS256', { modulusLength: 2048 }),
    freshKey('ec', 'ES256', { namedCurve: 'P-256' }),
  ],
};
if (args['keys-out']) {
  writeFileSync(args['keys-out'], JSON.stringify(jwks), { mode: 0o600 });
}

const clientOf = (client) => CLIENTS[client?.clientId];

/** The relying party users sign in through (authorization code); only with --rp-redirect. */
export const LOGIN_CLIENT = 'portcullis-login';
const LOGIN_SCOPE = 'openid';
const rpRedirects = args['rp-redirect'] ?? [];
const loginClients = rpRedirects.length ? [{
  client_id: LOGIN_CLIENT,
  client_secret: `${LOGIN_CLIENT}-secret`,
  token_endpoint_auth_method: 'client_secret_basic',
  grant_types: ['authorization_code'],
  response_types: ['code'],
  redirect_uris: rpRedirects,
  scope: LOGIN_SCOPE,
}] : [];

/** Accounts exist for any login name; only `alice` is in a group. */
function account(login) {
  return {
    accountId: login,
    async claims() {
      return { sub: login, email: `${login}@example.com`, groups: login === 'alice' ? ['oidc-team'] : [] };
    },
  };
}

const provider = new Provider(issuer, {
  jwks,
  clients: [
    ...Object.keys(CLIENTS).map((id) => ({
      client_id: id,
      client_secret: `${id}-secret`,
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      scope: SCOPE,
    })),
    ...loginClients,
  ],
  scopes: [SCOPE, LOGIN_SCOPE],
  // The ID token itself carries the openid scope's claims (not only the userinfo endpoint);
  // `amr` and `auth_time` are only put in when a scope (or the claims parameter) names them.
  claims: {
    acr: null, sid: null, auth_time: null, iss: null,
    openid: ['sub', 'email', 'groups', 'amr', 'auth_time'],
  },
  conformIdTokenClaims: false,
  findAccount: async (ctx, sub) => account(sub),
  interactions: { url: async (ctx, interaction) => `/interaction/${interaction.uid}` },
  // Every authorization code flow must use PKCE (S256 is the only method oidc-provider allows).
  pkce: { required: () => true },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    revocation: { enabled: false },
    resourceIndicators: {
      enabled: true,
      // Machine clients default to RESOURCE (JWT access tokens); the login client asks for none
      // (its access token is opaque, for userinfo).
      defaultResource: async (ctx, client, oneOf) => (clientOf(client) ? RESOURCE : oneOf),
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resource, client) => {
        const c = clientOf(client);
        if (resource !== RESOURCE || !c) {
          throw new errors.InvalidTarget(`unknown resource ${resource}`);
        }
        return {
          scope: SCOPE,
          audience: c.aud,
          accessTokenFormat: 'jwt',
          accessTokenTTL: c.ttl ?? DEFAULT_TTL,
          jwt: { sign: { alg: c.alg } },
        };
      },
    },
  },
  extraTokenClaims: async (ctx, token) => CLIENTS[token.clientId]?.claims,
  ttl: {
    ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL ?? DEFAULT_TTL,
    AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL ?? DEFAULT_TTL,
  },
});
// -- the sign-in pages (instead of devInteractions) ------------------------------------------

const escapeHtml = (v) => String(v).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginPage(uid, clientId, error) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Sign in - test IdP</title></head>
<body>
<h1>Sign in to ${escapeHtml(clientId)}</h1>
${error ? `<p class="error" role="alert">${escapeHtml(error)}</p>\n` : ''}<form method="post" action="/interaction/${escapeHtml(uid)}/login">
<label>Login <input type="text" name="login" autocomplete="username" required></label>
<label>Password <input type="password" name="password" autocomplete="current-password" required></label>
<label><input type="checkbox" name="mfa" value="1"> one-time code verified</label>
<button type="submit">Sign in</button>
</form>
</body></html>
`;
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

/** The Grant for this interaction's account and client, with the openid scope added. */
async function grantOpenid(details, accountId) {
  const clientId = details.params.client_id;
  let grant = details.grantId ? await provider.Grant.find(details.grantId) : undefined;
  if (!grant || grant.accountId !== accountId) {
    grant = new provider.Grant({ accountId, clientId });
  }
  grant.addOIDCScope(LOGIN_SCOPE);
  return grant.save();
}

function sendHtml(res, status, html) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.end(html);
}

const INTERACTION = /^\/interaction\/([A-Za-z0-9_-]+)(\/login)?$/;

provider.use(async (ctx, next) => {
  const m = INTERACTION.exec(ctx.path);
  if (!m) return next();
  const [, uid, login] = m;
  const { req, res } = ctx;
  ctx.respond = false; // the handlers below write to res themselves
  try {
    const details = await provider.interactionDetails(req, res);
    if (details.uid !== uid) throw new errors.SessionNotFound('interaction uid mismatch');
    const { prompt, params, session } = details;
    if (!login && ctx.method === 'GET') {
      if (prompt.name === 'login') {
        sendHtml(res, 200, loginPage(uid, params.client_id));
        return;
      }
      // Any other prompt (consent): granted without asking.
      const grantId = await grantOpenid(details, session.accountId);
      await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
      return;
    }
    if (login && ctx.method === 'POST') {
      const form = await readForm(req);
      const name = (form.get('login') || '').trim();
      if (!name || form.get('password') === 'wrong' || !form.get('password')) {
        sendHtml(res, 200, loginPage(uid, params.client_id, 'Wrong login or password.'));
        return;
      }
      const mfa = form.get('mfa') === '1';
      const grantId = await grantOpenid(details, name);
      await provider.interactionFinished(req, res, {
        login: { accountId: name, amr: mfa ? ['pwd', 'otp', 'mfa'] : ['pwd'] },
        consent: { grantId },
      }, { mergeWithLastSubmission: false });
      return;
    }
    res.statusCode = 405;
    res.setHeader('Allow', login ? 'POST' : 'GET');
    res.end();
  } catch (err) {
    const status = err.statusCode || 500;
    if (status >= 500) process.stderr.write(`idp interaction error: ${err.stack || err}\n`);
    sendHtml(res, status, `<!DOCTYPE html><html><body><h1>${escapeHtml(err.error || 'error')}</h1><p>${escapeHtml(err.error_description || err.message)}</p></body></html>\n`);
  }
});

provider.on('server_error', (ctx, err) => process.stderr.write(`idp server_error: ${err.stack || err}\n`));
provider.on('grant.error', (ctx, err) => process.stderr.write(`idp grant.error: ${err.message} (${err.error_description || ''})\n`));

const server = provider.listen(port, '127.0.0.1', () => {
  process.stdout.write('ready\n');
});
server.on('error', (err) => {
  process.stderr.write(`idp cannot listen on 127.0.0.1:${port}: ${err.message}\n`);
  process.exit(1);
});

function shutdown() {
  server.close();
  server.closeAllConnections?.();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
process.stdin.on('end', shutdown);
process.stdin.on('close', shutdown);
process.stdin.on('error', shutdown);
process.stdin.resume();
