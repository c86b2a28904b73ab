// 200 VUs looping connect → join → 2 s → leave for 60 s. Env: WS_URL, VUS, DURATION.
import { churn } from './lib.js';

const scenario = churn(60);
export const options = scenario.options;
export default scenario.run;
