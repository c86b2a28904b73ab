// The chat protocol's core (docs/protocol.md: join, chats stamped with the
// joined name and relayed to everyone else, JSON ping/pong, leave, 10 chats/s
// per connection, /health, close 1001 at SIGTERM) on Node.js and `ws`, the
// way ws's README shows a broadcast ("Server broadcast" example): a
// WebSocketServer on an http server, and on each message a loop over
// `wss.clients` sending to every other open client. The chat is serialized
// once per message. Backpressure as ws offers it: a client whose
// `bufferedAmount` passes 1 MiB is closed with 1008 (a slow consumer). Prints
// the statistics block the compared servers print at exit.
'use strict';
const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

const portAt = process.argv.indexOf('--port');
const port = portAt >= 0 ? parseInt(process.argv[portAt + 1], 10) : 8080;
const MAX_BUFFERED = 1 << 20;

const stats = { relayed: 0, rateLimited: 0, connections: 0, open: 0, peak: 0 };
const started = process.hrtime.bigint();

const server = http.createServer((req, res) => {
  if (req.url === '/health') {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end('ok\n');
  } else {
    res.writeHead(404);
    res.end();
  }
});
const wss = new WebSocketServer({ server, path: '/ws', maxPayload: 65536 });

function validName(name) {
  if (typeof name !== 'string' || name !== name.trim()) return false;
  const chars = [...name];
  return chars.length >= 1 && chars.length <= 64 && !/\p{Cc}/u.test(name);
}

wss.on('connection', (ws) => {
  stats.connections += 1;
  stats.open += 1;
  stats.peak = Math.max(stats.peak, stats.open);
  ws.user = null;
  ws.tokens = 10;
  ws.at = Date.now();
  ws.on('close', () => {
    stats.open -= 1;
  });
  ws.on('error', () => {});
  ws.on('message', (data, isBinary) => {
    if (isBinary) return;
    let msg;
    try {
      msg = JSON.parse(data);
    } catch (e) {
      return;
    }
    if (msg === null || typeof msg !== 'object') return;
    switch (msg.type) {
      case 'join':
        if (ws.user === null && validName(msg.user)) ws.user = msg.user;
        break;
      case 'chat': {
        if (ws.user === null || typeof msg.text !== 'string') return;
        const now = Date.now();
        ws.tokens = Math.min(10, ws.tokens + ((now - ws.at) / 1000) * 10);
        ws.at = now;
        if (ws.tokens < 1) {
          stats.rateLimited += 1;
          return;
        }
        ws.tokens -= 1;
        const chat = { type: 'chat', room: 'public', user: ws.user, text: msg.text };
        if (msg.ts !== undefined) chat.ts = msg.ts;
        const out = JSON.stringify(chat);
        stats.relayed += 1;
        for (const client of wss.clients) {
          if (client === ws || client.user === null || client.readyState !== WebSocket.OPEN) continue;
          if (client.bufferedAmount > MAX_BUFFERED) {
            client.close(1008, 'slow consumer');
            continue;
          }
          client.send(out);
        }
        break;
      }
      case 'ping':
        ws.send(msg.ts === undefined ? '{"type":"pong"}' : JSON.stringify({ type: 'pong', ts: msg.ts }));
        break;
      case 'leave':
        ws.close(1000, 'bye');
        break;
      default:
    }
  });
});

server.listen(port, '127.0.0.1', () => {
  console.log(`listening on 127.0.0.1:${server.address().port}`);
});

function printStats() {
  const secs = Number(process.hrtime.bigint() - started) / 1e9;
  const total = stats.relayed;
  const offered = total + stats.rateLimited;
  console.log(
    '--- Statistics ---\n' +
      `Total messages: ${total}\n` +
      `Processing time: ${secs.toFixed(3)}s\n` +
      `Average latency: ${(total ? (secs * 1000) / total : 0).toFixed(3)}ms\n` +
      `Throughput: ${(secs > 0 ? total / secs : 0).toFixed(2)} messages/sec\n` +
      `Total connections: ${stats.connections}\n` +
      `Message drop rate: ${(offered ? (100 * stats.rateLimited) / offered : 0).toFixed(2)}%\n` +
      `Peak connections: ${stats.peak}`,
  );
}

function shutdown() {
  server.close();
  for (const client of wss.clients) client.close(1001, 'server shutting down');
  const deadline = Date.now() + 2000;
  const wait = () => {
    if (stats.open === 0 || Date.now() > deadline) {
      printStats();
      process.exit(0);
    }
    setTimeout(wait, 20);
  };
  wait();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
