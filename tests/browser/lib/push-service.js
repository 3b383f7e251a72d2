// A real push service for the browser tests (RFC 8030), in this process: the server under test
// posts its pushes here, exactly as it would to a browser vendor's push service, and the test
// hands what arrived, decrypted, to Chromium (ServiceWorker.deliverPushMessage). So the worker
// is tested with the bytes Tidings sends, not with a payload the test made up.
//
// Every push is checked as a push service and a browser would check it:
// * VAPID (RFC 8292): `Authorization: vapid t=<JWT>, k=<key>`; `k` is the server's published
//   key, the JWT is ES256 and valid under it, `aud` is this endpoint's origin, `exp` is in the
//   future and within 24 h, `sub` is a `mailto:` or `https:` URL;
// * the body (RFC 8291, `Content-Encoding: aes128gcm`) is decrypted with the subscription's
//   private key and auth secret, generated here as a browser generates them (Node's crypto for
//   the P-256 key pair, web-push-libs' `http_ece` for the decryption, not the crate the server
//   encrypts with).
// A push that fails a check is answered 400/401 and recorded in `violations`, which the tests
// assert stays empty. Plain HTTP on 127.0.0.1: the server runs with
// TIDINGS__WEBPUSH__ALLOW_INSECURE_ENDPOINTS=true, as the API tests' push service needs too.
import crypto from 'node:crypto';
import http from 'node:http';
import ece from 'http_ece';

const b64u = (buf) => Buffer.from(buf).toString('base64url');
/** Bodies larger than a push service must take (4,096 bytes) are refused before reading on. */
const MAX_BODY = 4096;

/** A browser's side of one subscription: its P-256 key pair and auth secret. */
class Subscription {
  constructor(service, id) {
    this.id = id;
    this.endpoint = `${service.origin}/push/${id}`;
    this.ecdh = crypto.createECDH('prime256v1');
    this.ecdh.generateKeys();
    this.auth = crypto.randomBytes(16);
    /** Decrypted pushes in arrival order: `{ bytes, json, headers, at }`. */
    this.received = [];
  }

  /** The `PushSubscription` JSON a browser hands its page (`subscription.toJSON()`). */
  toJSON() {
    return {
      endpoint: this.endpoint,
      expirationTime: null,
      keys: { p256dh: b64u(this.ecdh.getPublicKey()), auth: b64u(this.auth) },
    };
  }

  decrypt(body) {
    return ece.decrypt(body, { version: 'aes128gcm', privateKey: this.ecdh, authSecret: b64u(this.auth) });
  }
}

export class PushService {
  /** @param {string} vapidPublicKey the server's application server key (base64url, 65 bytes) */
  constructor(vapidPublicKey) {
    this.vapidPublicKey = vapidPublicKey;
    this.subscriptions = new Map();
    this.violations = [];
    this.waiters = new Set();
    this.nextId = 1;
    this.server = http.createServer((req, res) => this.handle(req, res));
  }

  static async start(vapidPublicKey) {
    const s = new PushService(vapidPublicKey);
    await new Promise((resolve, reject) => {
      s.server.once('error', reject);
      s.server.listen(0, '127.0.0.1', resolve);
    });
    s.origin = `http://127.0.0.1:${s.server.address().port}`;
    return s;
  }

  async stop() {
    this.server.closeAllConnections?.();
    await new Promise((resolve) => this.server.close(() => resolve()));
  }

  subscribe() {
    const sub = new Subscription(this, `s${this.nextId++}-${crypto.randomBytes(6).toString('hex')}`);
    this.subscriptions.set(sub.id, sub);
    return sub;
  }

  /**
   * Resolves with the first push to `sub` (already received or still to come) whose decrypted
   * JSON satisfies `pred`; rejects after `timeout` ms, naming what did arrive.
   */
  waitFor(sub, pred, { timeout = 10000, message = 'a push' } = {}) {
    const found = sub.received.find((p) => pred(p.json));
    if (found) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const w = {
        sub,
        check: (p) => {
          if (!pred(p.json)) return;
          clearTimeout(timer);
          this.waiters.delete(w);
          resolve(p);
        },
      };
      const timer = setTimeout(() => {
        this.waiters.delete(w);
        const got = sub.received.map((p) => p.json);
        reject(new Error(`push service: no ${message} within ${timeout} ms; received ${JSON.stringify(got)}; violations ${JSON.stringify(this.violations)}`));
      }, timeout);
      this.waiters.add(w);
    });
  }

  violation(res, status, what) {
    this.violations.push(what);
    res.writeHead(status, { 'content-type': 'text/plain' });
    res.end(what);
  }

  handle(req, res) {
    const m = /^\/push\/([A-Za-z0-9-]+)$/.exec(req.url || '');
    const sub = m && this.subscriptions.get(m[1]);
    if (req.method !== 'POST' || !sub) {
      res.writeHead(404);
      res.end();
      return;
    }
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size <= MAX_BODY) chunks.push(c);
    });
    req.on('end', () => {
      if (size > MAX_BODY) {
        this.violation(res, 413, `a body of ${size} bytes`);
        return;
      }
      const vapid = this.checkVapid(req.headers.authorization);
      if (vapid) {
        this.violation(res, 401, vapid);
        return;
      }
      if (!/^\d+$/.test(req.headers.ttl || '')) {
        this.violation(res, 400, `TTL header ${JSON.stringify(req.headers.ttl)}`);
        return;
      }
      if (req.headers['content-encoding'] !== 'aes128gcm') {
        this.violation(res, 400, `Content-Encoding ${JSON.stringify(req.headers['content-encoding'])}`);
        return;
      }
      let bytes;
      try {
        bytes = sub.decrypt(Buffer.concat(chunks));
      } catch (e) {
        this.violation(res, 400, `decryption failed: ${e.message}`);
        return;
      }
      let json;
      try {
        json = JSON.parse(bytes.toString('utf8'));
      } catch {
        this.violation(res, 400, `not JSON: ${bytes.toString('utf8').slice(0, 200)}`);
        return;
      }
      const push = { bytes, json, headers: { ...req.headers }, at: Date.now() };
      sub.received.push(push);
      res.writeHead(201, { location: `${this.origin}/message/${crypto.randomUUID()}` });
      res.end();
      for (const w of [...this.waiters]) if (w.sub === sub) w.check(push);
    });
  }

  /** `null` when the VAPID header is right, otherwise what is wrong with it. */
  checkVapid(header) {
    const m = /^vapid\s+(.+)$/i.exec(header || '');
    if (!m) return `Authorization ${JSON.stringify(header)} is not a vapid one`;
    const params = Object.fromEntries(m[1].split(',').map((p) => {
      const i = p.indexOf('=');
      return [p.slice(0, i).trim(), p.slice(i + 1).trim()];
    }));
    if (params.k !== this.vapidPublicKey) return `k=${params.k} is not the server's key ${this.vapidPublicKey}`;
    const parts = (params.t || '').split('.');
    if (parts.length !== 3) return 'the JWT has not three parts';
    const [h, c, s] = parts;
    let head;
    let claims;
    try {
      head = JSON.parse(Buffer.from(h, 'base64url').toString('utf8'));
      claims = JSON.parse(Buffer.from(c, 'base64url').toString('utf8'));
    } catch {
      return 'the JWT header or claims are not JSON';
    }
    if (head.alg !== 'ES256') return `alg ${head.alg}, not ES256`;
    const raw = Buffer.from(params.k, 'base64url');
    if (raw.length !== 65 || raw[0] !== 4) return 'k is not an uncompressed P-256 point';
    const key = crypto.createPublicKey({
      key: { kty: 'EC', crv: 'P-256', x: b64u(raw.subarray(1, 33)), y: b64u(raw.subarray(33)) },
      format: 'jwk',
    });
    const ok = crypto.verify('sha256', Buffer.from(`${h}.${c}`), { key, dsaEncoding: 'ieee-p1363' }, Buffer.from(s, 'base64url'));
    if (!ok) return 'the JWT signature does not verify under k';
    if (claims.aud !== this.origin) return `aud ${claims.aud}, not ${this.origin}`;
    const now = Math.floor(Date.now() / 1000);
    if (!(typeof claims.exp === 'number' && claims.exp > now && claims.exp <= now + 24 * 3600)) {
      return `exp ${claims.exp} is not in the next 24 h`;
    }
    if (!/^(mailto:|https:)/.test(claims.sub || '')) return `sub ${claims.sub} is neither mailto: nor https:`;
    return null;
  }
}
