// A screenshot of the demo with a badge and a list: tests/browser/artifacts/demo.png (a test artifact)
// and docs/demo.png (referenced from the README; written when missing or with
// TIDINGS_UPDATE_DOCS_SCREENSHOT=1). Realistic notifications, some older and read.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { e2e, publish, markReadRest, waitBadge, waitItems, waitFor, connState, ARTIFACTS, ROOT } from './lib/harness.js';

// Oldest first. `ago` (seconds) is applied to created_at when the sqlite3 CLI is there.
const OLDER = [
  {
    type: 'feature.launch', title: 'Scheduled reports are here', ago: 3 * 86400 + 3600, read: true,
    body: 'Send any report to your team every Monday at 9:00, as a PDF or a link.',
    link: 'https://acme.example.com/changelog/scheduled-reports',
  },
  {
    type: 'team.invite', title: 'Sam Okafor invited you to the Analytics team', ago: 26 * 3600, read: true,
    body: 'Join to see the weekly revenue dashboards and the churn report.',
    link: 'https://acme.example.com/teams/analytics',
  },
  {
    type: 'security.login', title: 'New sign-in from Firefox on macOS', ago: 3 * 3600 + 600, read: true,
    body: 'Berlin, Germany. If this wasn’t you, reset your password now.',
    link: 'https://acme.example.com/account/security',
  },
  {
    type: 'invoice.ready', title: 'Invoice INV-2026-0117 is ready', ago: 38 * 60, read: false,
    body: '€1,280.00 for November, due December 15. Paid automatically by the card ending 4242.',
    link: 'https://acme.example.com/billing/invoices/INV-2026-0117',
    data: { invoice: 'INV-2026-0117', amount_cents: 128000, currency: 'EUR' },
  },
  {
    type: 'order.shipped', title: 'Your order #4821 has shipped', ago: 4 * 60, read: false,
    body: '2 items are on their way with UPS (1Z 999 AA1 01 2345 6784), arriving Thursday.',
    link: 'https://shop.example.com/orders/4821',
    data: { order_id: 4821 },
  },
];
const LIVE = {
  type: 'comment.mention', title: 'Priya Natarajan mentioned you',
  body: 'In “Q4 launch plan”: “@alice can you confirm the EU rollout date before Friday’s review?”',
  link: 'https://docs.acme.example.com/q4-launch-plan#comment-88',
};

function hasSqlite3() {
  try {
    execFileSync('sqlite3', ['-version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

e2e('screenshot of the demo page with a badge and a list (artifacts/demo.png, docs/demo.png)', async (s) => {
  const server = await s.sqliteServer();
  const created = await publish(server, OLDER);
  await markReadRest(server, created.filter((_, i) => OLDER[i].read).map((c) => c.id));

  // Give the older ones their age: stop the server, rewrite created_at, start it again.
  if (hasSqlite3()) {
    await server.stop();
    const dbFile = server.databaseUrl.replace(/^sqlite:\/\//, '');
    const now = Date.now();
    const sql = created.map((c, i) => {
      const at = new Date(now - OLDER[i].ago * 1000).toISOString();
      const readAt = OLDER[i].read ? `'${new Date(now - OLDER[i].ago * 1000 + 600000).toISOString()}'` : 'NULL';
      const row = `user_id = '${c.recipient}' AND seq = ${c.seq}`;
      return `UPDATE messages SET created_at = '${at}' WHERE id = (SELECT message_id FROM inbox WHERE ${row});
UPDATE inbox SET read_at = ${readAt} WHERE ${row};`;
    }).join('\n');
    execFileSync('sqlite3', [dbFile, sql]);
    await server.start();
  } else {
    s.note('sqlite3 is not installed: every notification says "just now"');
  }

  const ctx = await s.context({ viewport: { width: 1200, height: 800 }, deviceScaleFactor: 1, locale: 'en-US', timezoneId: 'Europe/Berlin' });
  const page = await s.openDemo(ctx, server, { label: 'tab1' });
  await waitBadge([page], 2);
  await publish(server, [LIVE]);
  await waitBadge([page], 3);
  await waitItems(page, [1, 2, 3, 4, 5, 6], { read: new Set([1, 2, 3]), settle: 0 });
  await waitFor(async () => (await connState(page)).text === 'live · sse', { message: 'live · sse' });
  assert.equal(await page.locator('#panel').isVisible(), true, 'the panel is open');
  await page.mouse.move(5, 790); // no hover effect on the list
  await page.waitForTimeout(1800); // let the arrival highlight fade

  const artifact = path.join(ARTIFACTS, 'demo.png');
  await page.screenshot({ path: artifact, animations: 'disabled' });
  const size = fs.statSync(artifact).size;
  assert.ok(size > 20000, `the screenshot has content (${size} bytes)`);
  s.note(`screenshot: ${artifact} (${size} bytes)`);

  // The committed copy is written when missing or on request, so that a test run leaves the
  // work tree clean: TIDINGS_UPDATE_DOCS_SCREENSHOT=1 bash tests/browser/run.sh refreshes it.
  const docs = path.join(ROOT, 'docs', 'demo.png');
  if (!fs.existsSync(docs) || process.env.TIDINGS_UPDATE_DOCS_SCREENSHOT === '1') {
    fs.mkdirSync(path.dirname(docs), { recursive: true });
    fs.copyFileSync(artifact, docs);
    s.note(`copied to ${docs}`);
  }
});
