// A real OpenID Connect provider (node-oidc-provider) for Tidings' provider-token tests.
//
//   node harness.mjs PORT
//
// Serves the provider at http://127.0.0.1:PORT (issuer = that URL): discovery, JWKS, and a
// `billing` client with the client-credentials grant whose access tokens are JWTs for the
// `tidings` audience with the `notifications:publish` scope. Prints one JSON line when it
// listens. Test-only routes, under /_test/, drive it:
//
//   POST /_test/token   {claims, key?: "current" | "foreign", kid?, ttl?}
//                       a user access token signed with the provider's own current key (or
//                       with another provider's key), as the provider's user flow would issue
//   POST /_test/rotate  a new signing key, listed first (the provider signs with it); the
//                       old one stays in the JWKS
//   POST /_test/retire  drops every key but the newest from the JWKS
//   POST /_test/cache-control  {value}: the Cache-Control header of /jwks ("" for none)
//   GET  /_test/state   {fetches, kids}: JWKS fetches served so far, the JWKS's kids
//
// Loopback only, plain HTTP: oidc-provider's development mode allows an http issuer.

import http from 'node:http';
import { randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';
import { exportJWK, generateKeyPair, SignJWT, importJWK } from 'jose';

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node harness.mjs PORT');
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;
const audience = process.env.OIDC_AUDIENCE || 'tidings';

async function newKey() {
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const jwk = await exportJWK(privateKey);
  return { ...jwk, kid: randomBytes(8).toString('hex'), alg: 'RS256', use: 'sig' };
}

const state = {
  keys: [await newKey()],
  foreign: await newKey(),
  cacheControl: null,
  fetches: 0,
};

function makeProvider() {
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: 'billing',
        client_secret: 'billing-secret',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_post',
        scope: 'notifications:publish',
      },
    ],
    jwks: { keys: state.keys },
    scopes: ['openid', 'notifications:publish'],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:tidings',
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: 'notifications:publish',
          audience,
          accessTokenTTL: 300,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
  });
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.path === '/jwks') {
      state.fetches += 1;
      if (state.cacheControl !== null) {
        if (state.cacheControl) ctx.set('Cache-Control', state.cacheControl);
        else ctx.remove('Cache-Control');
      }
    }
  });
  return provider;
}

let provider = makeProvider();

async function readJson(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('body too large');
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  return text ? JSON.parse(text) : {};
}

async function mint(body) {
  const key = body.key === 'foreign' ? state.foreign : state.keys[0];
  const now = Math.floor(Date.now() / 1000);
  const claims = { iss: issuer, aud: audience, iat: now, exp: now + (body.ttl ?? 300), ...body.claims };
  const signing = await importJWK(key, 'RS256');
  return new SignJWT(claims)
    .setProtectedHeader({ alg: 'RS256', typ: 'at+jwt', kid: body.kid ?? key.kid })
    .sign(signing);
}

async function testRoute(req, res) {
  const send = (status, value) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(value));
  };
  const path = req.url.split('?')[0];
  const body = req.method === 'POST' ? await readJson(req) : {};
  switch (`${req.method} ${path}`) {
    case 'POST /_test/token':
      return send(200, { token: await mint(body) });
    case 'POST /_test/rotate':
      state.keys = [await newKey(), ...state.keys];
      provider = makeProvider();
      return send(200, { kid: state.keys[0].kid });
    case 'POST /_test/retire':
      state.keys = [state.keys[0]];
      provider = makeProvider();
      return send(200, { kid: state.keys[0].kid });
    case 'POST /_test/cache-control':
      state.cacheControl = body.value ?? null;
      return send(200, {});
    case 'GET /_test/state':
      return send(200, { fetches: state.fetches, kids: state.keys.map((k) => k.kid) });
    default:
      return send(404, { error: 'no such test route' });
  }
}

const server = http.createServer((req, res) => {
  if (req.url.startsWith('/_test/')) {
    testRoute(req, res).catch((e) => {
      res.writeHead(500, { 'content-type': 'text/plain' });
      res.end(String(e));
    });
    return;
  }
  provider.callback()(req, res);
});

server.listen(port, '127.0.0.1', () => {
  console.log(JSON.stringify({ ready: true, issuer }));
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
// The test's end closes our stdin: never outlive it.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
