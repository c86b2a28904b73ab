// Ramp 0 → 1000 VUs in 10 s, hold 5 s, ramp down in 5 s; each joins, sends one
// chat and leaves after 15 s. Env: WS_URL, PEAK (VUs), HOLD (seconds per session).
import { sendChat, session, thresholds } from './lib.js';

const peak = parseFloat(__ENV.PEAK || '1000');
const hold = parseFloat(__ENV.HOLD || '15');

export const options = {
  scenarios: {
    burst: {
      executor: 'ramping-vus',
      startVUs: 0,
      stages: [
        { duration: '10s', target: peak },
        { duration: '5s', target: peak },
        { duration: '5s', target: 0 },
      ],
      gracefulRampDown: `${hold + 5}s`,
    },
  },
  thresholds,
};

export default function () {
  session(`burst-${__VU}-${__ITER}`, (socket) => {
    sendChat(socket);
    socket.setTimeout(() => socket.send('{"type":"leave"}'), hold * 1000);
  });
}
