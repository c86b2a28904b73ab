// The steady scenario for 300 s. Env: WS_URL, VUS, HOLD.
import { steady } from './lib.js';

const scenario = steady(300);
export const options = scenario.options;
export default scenario.run;
