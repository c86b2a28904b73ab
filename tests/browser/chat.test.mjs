// The page at GET / as people use it, in headless Chromium: two pages join,
// chat both ways, an HTML message stays text, a newcomer sees the last
// messages, a dropped connection recovers what it missed (and sends what was
// typed meanwhile), a server restart is marked as a possible gap (but not
// one with --history-file, which keeps the room), and a reload shows one's
// own earlier messages as one's own. Moderation: an operator's notice is
// shown set apart, a kicked page shows the reason and does not reconnect, a
// banned address reloading the page is told it is banned.
// Usage: node chat.test.mjs SERVER_BINARY ARTIFACT_DIR
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join as joinPath } from 'node:path';
import net from 'node:net';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';
import { expectMessage, join, say } from './page.mjs';

const [server_bin, artifacts] = process.argv.slice(2);
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const WAIT = 10_000;

// Starts the server; resolves with the process and its port once it listens.
async function startServer(port, extra = []) {
  const proc = spawn(server_bin, ['--host', '127.0.0.1', '--port', String(port), ...extra], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const [line] = await once(createInterface({ input: proc.stdout }), 'line');
  const match = /^listening on 127\.0\.0\.1:(\d+)/.exec(line);
  if (!match) throw new Error(`unexpected server output: ${line}`);
  proc.stdout.resume();
  const priv = /private listener on ([\d.:]+)\)/.exec(line);
  return { proc, port: Number(match[1]), private: priv && priv[1] };
}

// A TCP proxy in front of the server that can drop every connection it
// carries and hold new ones until it heals: a network blip, server side.
function startProxy(target) {
  const sockets = new Set();
  let held = null;
  let release = null;
  const proxy = net.createServer((client) => {
    const go = () => {
      const upstream = net.connect(target, '127.0.0.1');
      for (const s of [client, upstream]) {
        sockets.add(s);
        s.on('close', () => sockets.delete(s));
        s.on('error', () => {});
      }
      client.pipe(upstream);
      upstream.pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    };
    if (held) held.then(go);
    else go();
  });
  return new Promise((resolve) =>
    proxy.listen(0, '127.0.0.1', () =>
      resolve({
        port: proxy.address().port,
        cut() {
          held = new Promise((r) => (release = r));
          for (const s of sockets) s.destroy();
        },
        heal() {
          held = null;
          release();
        },
        close() {
          for (const s of sockets) s.destroy();
          proxy.close();
        },
      }),
    ),
  );
}

// How many messages on the page say exactly `text`.
async function count(page, text) {
  return page.evaluate(
    (text) => [...document.querySelectorAll('#log li .text')].filter((t) => t.textContent === text).length,
    text,
  );
}

async function stopServer(server) {
  if (server.proc.exitCode !== null) return;
  const exited = once(server.proc, 'exit');
  server.proc.kill('SIGTERM');
  await exited;
}

// Everything the Content-Security-Policy blocked, on any page.
const violations = [];

async function openPage(browser, url, name, dialogs) {
  const page = await browser.newPage({ viewport: { width: 560, height: 380 } });
  page.on('dialog', (dialog) => {
    dialogs.push(dialog.message());
    dialog.dismiss();
  });
  page.on('console', (message) => {
    if (/Content Security Policy/i.test(message.text())) violations.push(message.text());
  });
  await page.exposeFunction('reportViolation', (v) => violations.push(v));
  await page.addInitScript(() =>
    document.addEventListener('securitypolicyviolation', (e) =>
      window.reportViolation(`${e.violatedDirective} blocked ${e.blockedURI}`),
    ),
  );
  await page.goto(url);
  await join(page, name, WAIT);
  return page;
}

async function expectOnline(page, count) {
  await page.waitForFunction(
    (count) => document.getElementById('online').textContent === `${count} online`,
    count,
    { timeout: WAIT },
  );
}

let server = await startServer(0);
const direct = `http://127.0.0.1:${server.port}/`;
const proxy = await startProxy(server.port);
// Alice and Bob reach the server through the proxy; Carol directly.
const url = `http://127.0.0.1:${proxy.port}/`;
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
const dialogs = [];
let failed = false;
try {
  const alice = await openPage(browser, url, 'alice', dialogs);
  const bob = await openPage(browser, url, 'bob', dialogs);
  await expectOnline(alice, 2);
  await expectOnline(bob, 2);

  await say(alice, 'hello bob');
  await expectMessage(bob, 'alice', 'hello bob');
  await expectMessage(alice, 'alice', 'hello bob', true);
  await say(bob, 'hi alice');
  await expectMessage(alice, 'bob', 'hi alice');
  console.log('ok: two pages chat both ways, own messages shown locally');

  const xss = '<img src=x onerror=alert(1)>';
  await say(alice, xss);
  await expectMessage(bob, 'alice', xss);
  const images = await bob.evaluate(() => document.querySelectorAll('#log img').length);
  if (images !== 0 || dialogs.length !== 0) {
    throw new Error(`markup ran: ${images} <img>, dialogs ${JSON.stringify(dialogs)}`);
  }
  console.log('ok: an HTML message is shown as text and runs nothing');

  // The page runs under its policy (inline script and style allowed by hash only).
  const response = await alice.request.get(url);
  const policy = response.headers()['content-security-policy'] ?? '';
  if (!/script-src 'sha256-/.test(policy) || /unsafe-inline/.test(policy)) {
    throw new Error(`unexpected policy: ${policy}`);
  }
  if (violations.length !== 0) throw new Error(`policy violations: ${violations.join('; ')}`);
  console.log('ok: the page works under a policy that allows its script and style by hash only');

  // A name that would show as another is refused on the page, with a note.
  for (const lie of ['\u202enimda', 'alice\u3164']) {
    const liar = await browser.newPage();
    await liar.goto(url);
    await liar.fill('#name', lie);
    await liar.press('#name', 'Enter');
    await liar.waitForFunction(
      () => [...document.querySelectorAll('#log .note')].some((li) => /invisible or control/.test(li.textContent)),
      null,
      { timeout: WAIT },
    );
    if (!(await liar.isVisible('#join'))) throw new Error(`joined under a lying name ${JSON.stringify(lie)}`);
    await liar.close();
  }
  console.log('ok: names with a bidi override or a Hangul filler are refused on the page');

  // A newcomer sees the conversation so far, above a divider.
  const carol = await openPage(browser, direct, 'carol', dialogs);
  await expectMessage(carol, 'alice', 'hello bob');
  await expectMessage(carol, 'bob', 'hi alice');
  const order = await carol.evaluate(() =>
    [...document.querySelectorAll('#log li')].map((li) => li.textContent),
  );
  const divider = order.findIndex((t) => t === '— earlier messages above —');
  if (divider < 0 || divider < order.findIndex((t) => t.endsWith('hi alice'))) {
    throw new Error(`no divider below the history: ${JSON.stringify(order)}`);
  }
  console.log('ok: a newcomer sees the last messages above a divider');

  // A network blip: Alice's and Bob's connections drop; Carol chats meanwhile
  // and Alice types while away.
  proxy.cut();
  await alice.waitForSelector('#state.offline', { timeout: WAIT });
  await say(carol, 'missed 1');
  await say(carol, 'missed 2');
  await say(alice, 'typed while away');
  // More than the server's burst of 10: the page paces them, none is dropped.
  const burst = Array.from({ length: 13 }, (_, i) => `away ${i}`);
  for (const text of burst) await say(alice, text);
  proxy.heal();
  await alice.waitForSelector('#state.online', { timeout: 3 * WAIT });
  await expectMessage(alice, 'carol', 'missed 1');
  await expectMessage(alice, 'carol', 'missed 2');
  await expectMessage(carol, 'alice', 'typed while away');
  await bob.waitForSelector('#state.online', { timeout: 3 * WAIT });
  await expectMessage(bob, 'alice', 'typed while away');
  await new Promise((r) => setTimeout(r, 300));
  for (const text of ['hello bob', 'missed 1', 'missed 2', 'typed while away']) {
    if ((await count(alice, text)) !== 1) throw new Error(`alice shows "${text}" ${await count(alice, text)} times`);
  }
  if ((await count(carol, 'typed while away')) !== 1) throw new Error('what alice typed away came twice');
  for (const text of burst) {
    await expectMessage(carol, 'alice', text);
    if ((await count(carol, text)) !== 1) throw new Error(`carol shows "${text}" ${await count(carol, text)} times`);
  }
  const shown = await carol.evaluate(() => [...document.querySelectorAll('#log li .text')].map((t) => t.textContent));
  const places = burst.map((text) => shown.indexOf(text));
  if (places.some((at, i) => i > 0 && at < places[i - 1])) throw new Error(`out of order: ${JSON.stringify(places)}`);
  if (await alice.isVisible('#log .gap')) throw new Error('a gap mark after a full recovery');
  console.log('ok: after a dropped connection the page shows what it missed, once, and sends what was typed meanwhile (13, more than the burst the server allows, in order)');

  mkdirSync(artifacts, { recursive: true });
  await bob.screenshot({ path: `${artifacts}/chat.png` });

  await stopServer(server);
  await alice.waitForSelector('#state.offline', { timeout: WAIT });
  await bob.waitForSelector('#state.offline', { timeout: WAIT });
  // Started with --history-file from now on (none was written before).
  const historyFile = joinPath(mkdtempSync(joinPath(tmpdir(), 'page-')), 'room.json');
  server = await startServer(server.port, ['--history-file', historyFile]);
  await alice.waitForSelector('#state.online', { timeout: WAIT });
  await bob.waitForSelector('#state.online', { timeout: WAIT });
  // Alice, Bob and Carol (whose page reconnects as well) all rejoined.
  await expectOnline(alice, 3);
  await say(bob, 'back again');
  await expectMessage(alice, 'bob', 'back again');
  await say(alice, 'welcome back');
  await expectMessage(bob, 'alice', 'welcome back');
  // A restart lost the history: the page says messages may be missing.
  await alice.waitForSelector('#log .gap', { timeout: WAIT });
  console.log('ok: after a server restart both pages reconnect, rejoin, mark the possible gap and chat');

  // A restart that keeps the room (--history-file): back without a gap mark,
  // nothing shown twice, and what was said before it still there.
  const gaps = (page) => page.evaluate(() => document.querySelectorAll('#log .gap').length);
  const marked = [await gaps(alice), await gaps(bob)];
  await stopServer(server);
  await alice.waitForSelector('#state.offline', { timeout: WAIT });
  await bob.waitForSelector('#state.offline', { timeout: WAIT });
  server = await startServer(server.port, ['--history-file', historyFile]);
  await alice.waitForSelector('#state.online', { timeout: WAIT });
  await bob.waitForSelector('#state.online', { timeout: WAIT });
  await say(bob, 'after a deploy');
  await expectMessage(alice, 'bob', 'after a deploy');
  const now = [await gaps(alice), await gaps(bob)];
  if (now[0] !== marked[0] || now[1] !== marked[1]) {
    throw new Error(`a restart with --history-file was marked as a gap: ${marked} -> ${now}`);
  }
  for (const text of ['back again', 'welcome back']) {
    if ((await count(alice, text)) !== 1) throw new Error(`alice shows "${text}" ${await count(alice, text)} times`);
  }
  console.log('ok: after a restart with --history-file the pages come back with no gap mark and nothing twice');

  // After a reload, one's own earlier messages are shown as one's own.
  await alice.reload();
  await alice.fill('#name', 'alice');
  await alice.press('#name', 'Enter');
  await alice.waitForSelector('#state.online', { timeout: WAIT });
  await expectMessage(alice, 'alice', 'welcome back', true);
  await expectMessage(alice, 'bob', 'back again');
  console.log('ok: after a reload the history shows my own messages as mine');

  // Moderation, with the admin API on a private listener.
  const tokenFile = joinPath(mkdtempSync(joinPath(tmpdir(), 'admin-')), 'token');
  writeFileSync(tokenFile, 'browser-test-token-0123456789\n', { mode: 0o600 });
  await stopServer(server);
  server = await startServer(server.port, ['--private-address', '127.0.0.1:0', '--admin-token-file', tokenFile]);
  const admin = async (method, path, body) => {
    const response = await fetch(`http://${server.private}/admin/${path}`, {
      method,
      headers: { Authorization: 'Bearer browser-test-token-0123456789', 'Content-Type': 'application/json' },
      body: body && JSON.stringify(body),
    });
    if (!response.ok) throw new Error(`${method} /admin/${path}: ${response.status} ${await response.text()}`);
    return response.json();
  };
  await alice.waitForSelector('#state.online', { timeout: WAIT });
  await bob.waitForSelector('#state.online', { timeout: WAIT });
  await admin('POST', 'announce', { text: 'maintenance at noon' });
  for (const page of [alice, bob]) {
    await page.waitForFunction(
      () => [...document.querySelectorAll('#log li.notice')].some((li) => li.textContent === 'maintenance at noon'),
      null,
      { timeout: WAIT },
    );
  }
  console.log('ok: a notice from the operator is shown set apart on every page');
  const kicked = await admin('POST', 'kick', { user: 'bob', reason: 'be nice' });
  if (kicked.kicked !== 1) throw new Error(`kick closed ${kicked.kicked}`);
  await bob.waitForSelector('#state.offline', { timeout: WAIT });
  const ended = await bob.textContent('#log li.ended', { timeout: WAIT });
  if (!ended.includes('kicked by the operator: be nice')) throw new Error(`bob's page says: ${ended}`);
  // Well past the first reconnection delay (0.5 s): bob stays out.
  await new Promise((r) => setTimeout(r, 3000));
  const members = (await admin('GET', 'members')).members.map((m) => m.user);
  if (members.includes('bob') || !members.includes('alice')) throw new Error(`members after the kick: ${members}`);
  if ((await bob.textContent('#state')) !== 'removed') throw new Error('the kicked page reconnected');
  console.log('ok: a kicked page shows the reason and does not reconnect');
  await admin('POST', 'ban', { address: '127.0.0.1', seconds: 60, reason: 'spam' });
  await alice.waitForSelector('#log li.ended', { timeout: WAIT });
  await bob.reload();
  const said = await bob.textContent('body');
  if (!/banned from the chat for \d+ more seconds: spam/.test(said)) throw new Error(`a banned reload shows: ${said}`);
  await admin('DELETE', 'ban', { address: '127.0.0.1' });
  await bob.reload();
  await join(bob, 'bob', WAIT);
  console.log('ok: a banned address reloading the page is told so, and comes back once the ban is lifted');
  // A ban that catches a page while it reconnects: its upgrades' 403s show
  // only as 1006, so the page asks for itself and says it is banned.
  proxy.cut();
  await bob.waitForSelector('#state.offline', { timeout: WAIT });
  await admin('POST', 'ban', { address: '127.0.0.1', seconds: 60, reason: 'spam again' });
  proxy.heal();
  await bob.waitForFunction(
    () => [...document.querySelectorAll('#log li.ended')].some((li) => /banned from the chat for \d+ more seconds: spam again/.test(li.textContent)),
    null,
    { timeout: 3 * WAIT },
  );
  if ((await bob.textContent('#state')) !== 'removed') throw new Error('the banned page is still reconnecting');
  console.log('ok: a page reconnecting into a ban stops and says it is banned');
  if (violations.length !== 0) throw new Error(`policy violations: ${violations.join('; ')}`);
} catch (error) {
  failed = true;
  console.error(`FAILED: ${error.message}`);
} finally {
  await browser.close();
  proxy.close();
  await stopServer(server);
}
process.exit(failed ? 1 : 0);
