// 100 VUs, each joins then sends 1 chat/s for 60 s. Env: WS_URL, VUS, HOLD (seconds).
import { steady } from './lib.js';

const scenario = steady(60);
export const options = scenario.options;
export default scenario.run;
