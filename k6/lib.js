// Shared by the k6 scenarios: connect, join, chats padded to exactly 128 bytes
// of JSON with the send time at the start of `text` (receivers measure delivery
// latency from it), answers to JSON pings, and the scenario shapes.
import ws from 'k6/ws';
import { check } from 'k6';
import { Counter, Trend } from 'k6/metrics';

export const WS_URL = __ENV.WS_URL || 'ws://localhost:8080/ws';
const num = (name, fallback) => parseFloat(__ENV[name] || fallback);

export const chatLatency = new Trend('chat_latency', true);
export const chatsSent = new Counter('chats_sent');
export const chatsReceived = new Counter('chats_received');
export const wsErrors = new Counter('ws_errors');

export const thresholds = {
  ws_errors: ['count==0'],
  checks: ['rate==1'],
  chats_received: ['count>0'],
};

// A chat of exactly 128 bytes; `text` starts with the send time in ms.
export function chatMessage() {
  const now = Date.now();
  const head = `{"type":"chat","room":"public","text":"${now}|`;
  const tail = `","ts":${now}}`;
  return head + ' '.repeat(Math.max(0, 128 - head.length - tail.length)) + tail;
}

export function sendChat(socket) {
  socket.send(chatMessage());
  chatsSent.add(1);
}

// Opens a socket, joins, then hands it to `behaviour`. Returns when it closes.
export function session(name, behaviour) {
  const res = ws.connect(WS_URL, null, (socket) => {
    socket.on('open', () => {
      socket.send(JSON.stringify({ type: 'join', room: 'public', user: name }));
      behaviour(socket);
    });
    socket.on('message', (data) => {
      let msg;
      try {
        msg = JSON.parse(data);
      } catch (e) {
        return;
      }
      if (msg.type === 'chat') {
        chatsReceived.add(1);
        const sentAt = parseInt(String(msg.text).split('|')[0], 10);
        if (!isNaN(sentAt)) chatLatency.add(Date.now() - sentAt);
      } else if (msg.type === 'ping') {
        socket.send(JSON.stringify({ type: 'pong', ts: msg.ts }));
      }
    });
    socket.on('error', () => wsErrors.add(1));
  });
  if (!check(res, { 'upgraded (101)': (r) => r && r.status === 101 })) wsErrors.add(1);
}

// steady: VUS clients join, then each sends 1 chat/s for HOLD seconds and leaves.
export function steady(defaultHold) {
  const vus = num('VUS', 100);
  const hold = num('HOLD', defaultHold);
  return {
    options: {
      scenarios: { steady: { executor: 'per-vu-iterations', vus, iterations: 1, maxDuration: `${hold + 30}s` } },
      thresholds,
    },
    run: () =>
      session(`steady-${__VU}`, (socket) => {
        socket.setInterval(() => sendChat(socket), 1000);
        socket.setTimeout(() => socket.send('{"type":"leave"}'), hold * 1000);
      }),
  };
}

// churn: VUS loops of connect → join → 2 s → leave, for DURATION seconds.
export function churn(defaultDuration) {
  const vus = num('VUS', 200);
  const duration = num('DURATION', defaultDuration);
  return {
    options: {
      scenarios: { churn: { executor: 'constant-vus', vus, duration: `${duration}s`, gracefulStop: '10s' } },
      thresholds: { ws_errors: ['count==0'], checks: ['rate==1'] },
    },
    run: () =>
      session(`churn-${__VU}-${__ITER}`, (socket) => {
        socket.setTimeout(() => socket.send('{"type":"leave"}'), 2000);
      }),
  };
}
