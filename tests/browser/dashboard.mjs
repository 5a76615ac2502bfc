// Drives headless Chromium (Debian's /usr/bin/chromium, or $CHROMIUM)
// against a peer's dashboard, for tests/dashboard.rs:
//   node dashboard.mjs URL EXPECTED_PEERS KILLED_PEER_ID SCREENSHOT
// 1. loads URL, waits until the mesh picture shows EXPECTED_PEERS nodes
//    (this peer and the rest up) and the apps are listed; prints READY;
// 2. waits for a line on stdin (the test has killed KILLED_PEER_ID);
// 3. waits, without reloading, until that peer shows as down in both the
//    picture and the table; saves SCREENSHOT; prints OK.
// Every wait has a deadline; on failure it prints what the page showed.
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';

const [url, expected, killed, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let page;
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  page = await context.newPage();
  await page.goto(url);
  // Marks this document: after a reload it would be gone.
  await page.evaluate(() => { window.__firstLoad = true; });
  await page.waitForFunction((n) => {
    const nodes = [...document.querySelectorAll('#mesh .node')];
    return nodes.length === n && nodes.every(g => ['up', 'self'].includes(g.dataset.state))
      && document.querySelectorAll('.app').length > 0;
  }, Number(expected), { timeout: 20000 });
  const seen = await page.evaluate(() => ({
    nodes: [...document.querySelectorAll('#mesh .node')].map(g => g.dataset.state),
    apps: [...document.querySelectorAll('.app')].map(a => a.dataset.app),
  }));
  console.log('READY ' + JSON.stringify(seen));
  const rl = createInterface({ input: process.stdin });
  await new Promise((resolve) => rl.once('line', resolve));
  rl.close();
  await page.waitForFunction((id) => {
    const node = document.querySelector(`#mesh .node[data-peer="${id}"]`);
    const row = document.querySelector(`#peers tr[data-peer="${id}"]`);
    return node && row && node.dataset.state === 'down' && row.dataset.state === 'down';
  }, killed, { timeout: 20000 });
  const reloaded = await page.evaluate(() => window.__firstLoad !== true);
  await page.screenshot({ path: shot, fullPage: true });
  console.log(reloaded ? 'RELOADED' : 'OK');
} catch (e) {
  const text = page ? await page.evaluate(() => document.body.innerText).catch(() => '?') : '?';
  console.log('FAILED ' + e.message.split('\n')[0] + '\n--- page text ---\n' + text);
  if (page) await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
}
