/**
 * A real OpenID Connect provider (oidc-provider) for Portcullis's end-to-end JWT tests.
 *
 *   node tests/idp/server.mjs --port P [--keys-out FILE] [--keys-in FILE]
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
 * Only the client_credentials grant is enabled. Access tokens are JWTs (RFC 9068, header
 * `typ: at+jwt`) through the resourceIndicators feature; a client need not send `resource`: its
 * default (RESOURCE below) applies, and sending `resource=RESOURCE` works the same. Claims: `iss`,
 * `sub` = `client_id` = the client's id, `aud` (a string), `iat`, `exp`, `jti`, `scope` (only when
 * the request asked for a scope, e.g. `llm:proxy`), plus the client's extra claims (`amr`,
 * `groups`) from CLIENTS.
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
  options: { port: { type: 'string' }, 'keys-in': { type: 'string' }, 'keys-out': { type: 'string' } },
});
const port = Number(args.port);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  process.stderr.write('usage: node server.mjs --port PORT [--keys-out FILE] [--keys-in FILE]\n');
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

const provider = new Provider(issuer, {
  jwks,
  clients: Object.keys(CLIENTS).map((id) => ({
    client_id: id,
    client_secret: `${id}-secret`,
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: SCOPE,
  })),
  scopes: [SCOPE],
  cookies: { keys: [randomBytes(32).toString('hex')] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: false },
    revocation: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => RESOURCE,
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
