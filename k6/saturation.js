// 200 → 500 → 1000 VUs, each sending 5 chats/s in sessions of SESSION seconds.
// Meant to find where the server (or k6) saturates. Env: WS_URL, STAGE (seconds per step), SESSION.
import { sendChat, session, thresholds } from './lib.js';

const stage = parseFloat(__ENV.STAGE || '20');
const sessionSeconds = parseFloat(__ENV.SESSION || '10');

export const options = {
  scenarios: {
    saturation: {
      executor: 'ramping-vus',
      startVUs: 200,
      stages: [
        { duration: `${stage}s`, target: 200 },
        { duration: '5s', target: 500 },
        { duration: `${stage}s`, target: 500 },
        { duration: '5s', target: 1000 },
        { duration: `${stage}s`, target: 1000 },
      ],
      gracefulRampDown: `${sessionSeconds + 5}s`,
    },
  },
  thresholds,
};

export default function () {
  session(`sat-${__VU}-${__ITER}`, (socket) => {
    socket.setInterval(() => sendChat(socket), 200);
    socket.setTimeout(() => socket.send('{"type":"leave"}'), sessionSeconds * 1000);
  });
}
