// The churn scenario for 180 s. Env: WS_URL, VUS, DURATION.
import { churn } from './lib.js';

const scenario = churn(180);
export const options = scenario.options;
export default scenario.run;
