// A badge over MQTT: mqtt.js in headless Chromium, subscribed to alice's retained unread topic on
// Mosquitto's WebSocket listener, shows the unread count live while the bridge publishes it.
// The test starts its own Mosquitto (a TCP listener for the bridge, a WebSocket one for the
// browser) on free ports with a generated configuration, and stops it.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { createRequire } from 'node:module';
import { e2e, freePort, publish, markReadRest, inbox, waitBadge, waitFor } from './lib/harness.js';

const require = createRequire(import.meta.url);
// The browser bundle that mqtt.js ships (UMD: defines window.mqtt).
const MQTT_BUNDLE = path.join(path.dirname(require.resolve('mqtt/package.json')), 'dist', 'mqtt.min.js');
// Debian puts the broker in /usr/sbin, which a non-root PATH may lack.
const MOSQUITTO = process.env.MOSQUITTO || (fs.existsSync('/usr/sbin/mosquitto') ? '/usr/sbin/mosquitto' : 'mosquitto');

/** Mosquitto with a TCP and a WebSocket listener; resolves once both accept connections. */
async function startMosquitto(dir) {
  const tcp = await freePort();
  const ws = await freePort();
  const conf = path.join(dir, 'mosquitto.conf');
  fs.writeFileSync(conf, [
    `listener ${tcp} 127.0.0.1`,
    `listener ${ws} 127.0.0.1`,
    'protocol websockets',
    'allow_anonymous true',
    '',
  ].join('\n'));
  const log = fs.openSync(path.join(dir, 'mosquitto.log'), 'a');
  const child = spawn(MOSQUITTO, ['-c', conf], { stdio: ['ignore', log, log] });
  const exited = new Promise((r) => child.once('exit', r));
  const accepts = (port) => new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    sock.once('connect', () => { sock.destroy(); resolve(true); });
    sock.once('error', () => resolve(false));
  });
  await waitFor(async () => child.exitCode === null && (await accepts(tcp)) && (await accepts(ws)),
    { timeout: 15000, message: `mosquitto listening (log: ${path.join(dir, 'mosquitto.log')})` });
  return {
    tcp,
    ws,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        await exited;
      }
    },
  };
}

/** A bare page whose badge follows `tidings/users/{user}/unread`, keeping the highest version. */
async function openMqttBadge(s, ctx, wsPort, user, label) {
  const page = await ctx.newPage();
  page.__label = label;
  s.pages.push(page);
  page.on('console', (m) => s.console.push({ t: Date.now(), tab: label, type: m.type(), text: m.text() }));
  await page.setContent('<span data-testid="badge" hidden>0</span><span data-testid="mqtt">connecting</span>');
  await page.addScriptTag({ path: MQTT_BUNDLE });
  await page.evaluate(({ url, topic }) => {
    const badgeEl = document.querySelector('[data-testid="badge"]');
    const stateEl = document.querySelector('[data-testid="mqtt"]');
    let version = -1;
    // eslint-disable-next-line no-undef
    const client = mqtt.connect(url, { clientId: `badge-${Math.random().toString(16).slice(2)}`, reconnectPeriod: 500 });
    client.on('connect', () => {
      client.subscribe(topic, { qos: 1 }, (err) => { stateEl.textContent = err ? `error ${err}` : 'subscribed'; });
    });
    client.on('message', (_topic, payload) => {
      const m = JSON.parse(new TextDecoder().decode(payload));
      // At least once, and retained: an older copy may arrive after a newer one.
      if (typeof m.version !== 'number' || m.version <= version) return;
      version = m.version;
      badgeEl.textContent = String(m.unread);
      badgeEl.hidden = m.unread === 0;
    });
  }, { url: `ws://127.0.0.1:${wsPort}`, topic: `tidings/users/${user}/unread` });
  await page.waitForFunction(() => document.querySelector('[data-testid="mqtt"]').textContent === 'subscribed');
  return page;
}

e2e('mqtt badge: mqtt.js over the WebSocket listener shows the unread count live', async (s) => {
  const broker = await startMosquitto(s.dir);
  try {
    const server = await s.sqliteServer({
      env: { TIDINGS__MQTT__URL: `mqtt://127.0.0.1:${broker.tcp}`, TIDINGS__MQTT__POLL_MILLIS: '50' },
    });
    const ctx = await s.context();
    const tab = await openMqttBadge(s, ctx, broker.ws, 'alice', 'mqtt-tab');

    const t0 = Date.now();
    const created = await publish(server, ['Order #1001 shipped', 'Invoice INV-7 ready', 'Priya mentioned you']);
    const [ms] = await waitBadge([tab], 3, { since: t0, timeout: 10000 });
    s.time('mqtt badge 3 after the first POST', ms);

    const t1 = Date.now();
    await markReadRest(server, [created[1].id]);
    const [readMs] = await waitBadge([tab], 2, { since: t1, timeout: 10000 });
    s.time('mqtt badge 2 after a mark-read over REST', readMs);
    assert.equal((await inbox(server)).unread, 2, 'the badge agrees with REST');

    // A page opened later gets the retained count at once, without any new publish.
    const late = await openMqttBadge(s, ctx, broker.ws, 'alice', 'late-tab');
    await waitBadge([late], 2, { timeout: 10000 });

    // Someone else's notifications do not move alice's badge.
    await publish(server, ['For bob'], { recipient: 'bob' });
    await publish(server, ['One more for alice']);
    await waitBadge([tab, late], 3, { timeout: 10000 });
  } finally {
    await broker.stop();
  }
});
