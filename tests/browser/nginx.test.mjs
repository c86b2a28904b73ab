// The page through nginx (deploy/nginx.conf) in front of two instances
// sharing the room through Redis: two pages chat, every instance restarts
// behind nginx, both pages reconnect through it and chat again, and what was
// said while they were away is recovered.
// Usage: node nginx.test.mjs PAGE_URL RESTART_SCRIPT
import { spawnSync } from 'node:child_process';
import { chromium } from 'playwright-core';
import { expectMessage, join, say } from './page.mjs';

const [url, restart] = process.argv.slice(2);
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const WAIT = 15_000;

async function openPage(browser, name) {
  const page = await browser.newPage();
  await page.goto(url);
  await join(page, name, WAIT);
  return page;
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
try {
  const alice = await openPage(browser, 'alice');
  const bob = await openPage(browser, 'bob');
  await say(alice, 'before the restart');
  await expectMessage(bob, 'alice', 'before the restart', false, WAIT);
  console.log('ok: two pages chat through nginx');

  // Every instance restarts behind nginx (Redis keeps the room).
  const result = spawnSync('bash', [restart], { stdio: 'inherit' });
  if (result.status !== 0) throw new Error(`restart failed: ${result.status}`);
  await alice.waitForSelector('#state.online', { timeout: 3 * WAIT });
  await bob.waitForSelector('#state.online', { timeout: 3 * WAIT });
  await say(bob, 'after the restart');
  await expectMessage(alice, 'bob', 'after the restart', false, WAIT);
  await say(alice, 'and back');
  await expectMessage(bob, 'alice', 'and back', false, WAIT);
  console.log('ok: after every instance restarted behind nginx, both pages reconnected through it and chat');
} finally {
  await browser.close();
}
