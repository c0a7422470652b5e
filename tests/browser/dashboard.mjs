// The dashboard in a real browser (Debian's Chromium driven by playwright-core),
// against a running fleet-local with 5 simulated agents (scripts/test-browser
// starts it). Each check throws with what it saw; screenshots go to $SHOTS.
//
// Env: DASH_URL (http://127.0.0.1:PORT/), ADMIN_TOKEN_FILE, AGENTS_DIR (the
// agents' data dirs), FLEETCTL (binary; FLEET_SERVER, FLEET_CA, FLEET_TOKEN_FILE
// set for it), SHOTS (screenshot dir).

import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

const env = (k) => { const v = process.env[k]; if (!v) throw new Error(`${k} is not set (scripts/test-browser sets it)`); return v; };
const URL_ = env('DASH_URL');
const ADMIN = readFileSync(env('ADMIN_TOKEN_FILE'), 'utf8').trim();
const AGENTS = env('AGENTS_DIR');
const FLEETCTL = env('FLEETCTL');
const SHOTS = env('SHOTS');
mkdirSync(SHOTS, { recursive: true });

const offLoopback = [];
let step = '';
const results = [];

async function check(name, f) {
  step = name;
  const t0 = Date.now();
  await f();
  results.push(`ok   ${name} (${Date.now() - t0} ms)`);
  console.log(`ok   ${name}`);
}

async function newPage(browser, viewport = { width: 1280, height: 900 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.on('request', (r) => {
    const host = new URL(r.url()).hostname;
    if (!['127.0.0.1', 'localhost', '[::1]'].includes(host) && !r.url().startsWith('data:')) offLoopback.push(r.url());
  });
  page.on('pageerror', (e) => { throw new Error(`page error during "${step}": ${e.message}`); });
  return page;
}

async function login(page, token) {
  await page.goto(URL_);
  await page.fill('#token', token);
  await page.click('#login-form button[type=submit]');
  await page.waitForSelector('#fleet-table tbody tr', { timeout: 10_000 });
}

const profileCell = (node) => `#fleet-table tr[data-node="${node}"] td[data-col=profile]`;

const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu'] });
try {
  const page = await newPage(browser);

  await check('log in with the admin token; the fleet page shows 5 online', async () => {
    await login(page, ADMIN);
    await page.waitForFunction(() => document.querySelector('[data-count="state-online"] b')?.textContent === '5',
      null, { timeout: 20_000 });
    const rows = await page.locator('#fleet-table tbody tr').count();
    if (rows !== 5) throw new Error(`the table has ${rows} rows, not 5`);
    const notice = await page.textContent('#notice');
    if (!notice.includes('plain HTTP on loopback')) throw new Error(`no plain-HTTP notice on screen: ${notice}`);
    await page.screenshot({ path: join(SHOTS, 'fleet.png'), fullPage: true });
  });

  await check('a drained battery shows its new profile within 3 s, without reload', async () => {
    const node = 'sim-000';
    const before = await page.textContent(profileCell(node));
    await page.evaluate(() => { window.__notReloaded = true; });
    const t0 = Date.now();
    writeFileSync(join(AGENTS, node, 'unplugged'), '');
    await page.waitForFunction(([sel, was]) => document.querySelector(sel)?.textContent !== was,
      [profileCell(node), before], { timeout: 3_000 });
    const after = await page.textContent(profileCell(node));
    if (!(await page.evaluate(() => window.__notReloaded === true))) throw new Error('the page reloaded');
    console.log(`     ${node}: ${before} -> ${after} on the page ${Date.now() - t0} ms after the plug was pulled`);
    await page.screenshot({ path: join(SHOTS, 'fleet-drained.png'), fullPage: true });
  });

  await check('a node chart has points and grows', async () => {
    await page.goto(`${URL_}#/node/sim-001`);
    const points = () => page.evaluate(() => Number(document.querySelector('#charts .chart')?.dataset.points || 0));
    await page.waitForFunction(() => Number(document.querySelector('#charts .chart')?.dataset.points || 0) > 0, null, { timeout: 10_000 });
    const first = await points();
    await page.waitForFunction((n) => Number(document.querySelector('#charts .chart').dataset.points) > n, first, { timeout: 20_000 });
    console.log(`     CPU chart: ${first} points, then ${await points()}`);
    await page.screenshot({ path: join(SHOTS, 'node.png'), fullPage: true });
  });

  await check('a job submitted with fleetctl appears on the jobs page', async () => {
    const out = execFileSync(FLEETCTL, ['-o', 'json', 'jobs', 'submit', '--model', 'severity', '--text', 'disk full on /var'], { encoding: 'utf8' });
    const id = JSON.parse(out).job_id;
    await page.goto(`${URL_}#/jobs`);
    await page.waitForSelector(`#jobs-table tr[data-job="${id}"]`, { timeout: 10_000 });
    await page.screenshot({ path: join(SHOTS, 'jobs.png'), fullPage: true });
  });

  let viewerToken = '';
  await check('an admin creates a viewer token; its secret is shown once', async () => {
    await page.goto(`${URL_}#/security`);
    await page.fill('#api-token-form input[name=name]', `viewer-${Date.now()}`);
    await page.selectOption('#api-token-form select[name=role]', 'viewer');
    await page.click('#api-token-form button[type=submit]');
    viewerToken = (await page.textContent('#new-secret code', { timeout: 10_000 })).trim();
    if (!viewerToken.startsWith('fat_')) throw new Error(`no token shown: ${viewerToken}`);
    await page.waitForSelector('#audit td:text("CreateApiToken")');
    await page.screenshot({ path: join(SHOTS, 'security.png'), fullPage: true });
  });

  await check('a viewer sees no revoke action, and a forged POST gets 403', async () => {
    const viewer = await newPage(browser);
    await login(viewer, viewerToken);
    await viewer.goto(`${URL_}#/node/sim-001`);
    await viewer.waitForSelector('#actions');
    if (await viewer.locator('[data-action=revoke]').count()) throw new Error('a viewer sees the revoke button');
    const statuses = await viewer.evaluate(async () => {
      const s = JSON.parse(JSON.stringify((await (await fetch('/api/session')).json()).who));
      const forged = await fetch('/api/nodes/sim-001/revoke', { method: 'POST' });
      const withCsrf = await fetch('/api/nodes/sim-001/revoke', { method: 'POST', headers: { 'x-csrf-token': s.csrf } });
      return [forged.status, withCsrf.status];
    });
    if (statuses[0] !== 403 || statuses[1] !== 403) throw new Error(`forged POST answered ${statuses}`);
    await viewer.screenshot({ path: join(SHOTS, 'node-viewer.png'), fullPage: true });
    await viewer.context().close();
  });

  await check('at 390 px width the table stays usable', async () => {
    const phone = await newPage(browser, { width: 390, height: 844 });
    await login(phone, ADMIN);
    const m = await phone.evaluate(() => {
      const box = document.querySelector('#fleet-table').parentElement;
      const link = document.querySelector('#fleet-table tbody tr a').getBoundingClientRect();
      return { page: document.documentElement.scrollWidth, box: box.clientWidth, scrolls: box.scrollWidth > box.clientWidth,
        link: [link.left, link.right] };
    });
    if (m.page > 390) throw new Error(`the page is ${m.page} px wide at 390`);
    if (m.link[0] < 0 || m.link[1] > 390) throw new Error(`the node link is off screen: ${m.link}`);
    console.log(`     page ${m.page} px; the table scrolls inside its box: ${m.scrolls}`);
    await phone.screenshot({ path: join(SHOTS, 'fleet-390px.png'), fullPage: true });
    await phone.context().close();
  });

  await check('no request left loopback', async () => {
    if (offLoopback.length) throw new Error(`requests off loopback: ${offLoopback.join(', ')}`);
  });
} catch (e) {
  console.error(`FAILED: ${step}: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
  writeFileSync(join(SHOTS, 'results.txt'), results.join('\n') + '\n');
}
