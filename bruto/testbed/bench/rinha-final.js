// The Rinha de Backend 2025 final load test, the one that ranked the edition,
// rewritten from the rules (docs/CHALLENGE.md §3b).
//
//   k6 run -e MAX_REQUESTS=603 -e SUMMARY_FILE=/tmp/summary.json rinha-final.js
//
// Environment: MAX_REQUESTS (603), and rinha-common.js's (where the backend
// and the processors are, the token, SUMMARY_FILE, TIME_SCALE).
//
// Where it differs from the preview (rinha.js): 300 s, a fixed amount of
// 20.05, ten stages, no graceful ramp-down, a probe that counts each
// processor's difference on its own over [now - 15 s, now - 2 s], and a
// teardown that counts what the processors stored over the last 6 minutes.
// Like rinha.js it only measures; bruto.testbed.bench.score scores it.

import { sleep } from 'k6';
import { Gauge } from 'k6/metrics';
import {
  adminSummary, configure, inconsistencies, pay, probe, probesFailed, rawSummary, scenarios,
  summaryOptions, summaryQuery, teardownOk,
} from './rinha-common.js';

export { setup } from './rinha-common.js';

const MAX_REQUESTS = parseInt(__ENV.MAX_REQUESTS || '603', 10);
const DURATION_S = 300;

// The processors' configuration over time (docs/CHALLENGE.md §3b):
// [start second, default delay, default failing, fallback delay, fallback failing].
const STAGES = [
  [1, 0, false, 0, false],
  [30, 1000, false, 0, false],
  [60, 500, false, 0, false],
  [90, 2000, true, 1000, false],
  [120, 5000, true, 5, false],
  [150, 0, false, 5, true],
  [180, 100, false, 5, false],
  [210, 50, false, 0, false],
  [240, 103, false, 10, false],
  [270, 2000, false, 0, false],
];

// Set once, by teardown: what each processor stored, and its fee.
const processorRequests = {
  default: new Gauge('processor_default_requests'),
  fallback: new Gauge('processor_fallback_requests'),
};
const processorAmount = {
  default: new Gauge('processor_default_amount'),
  fallback: new Gauge('processor_fallback_amount'),
};
const feePerTransaction = {
  default: new Gauge('fee_default'),
  fallback: new Gauge('fee_fallback'),
};

export const options = {
  // NOTE: users still in an iteration when the ramp ends are stopped at once.
  scenarios: scenarios(DURATION_S, MAX_REQUESTS, STAGES, { gracefulRampDown: '0s' }),
  ...summaryOptions,
};

export function payment() {
  pay(20.05);
}

export function configureProcessors() {
  configure(STAGES);
}

export function consistency() {
  const now = Date.now();
  const answers = probe(new Date(now - 15000), new Date(now - 2000));
  if (answers.includes(null)) {
    probesFailed.add(1);
  }
  // NOTE: as in the official script, a summary that did not answer counts as
  // zero payments, so a failed probe of a backend holding payments counts them.
  const requests = (summary) => (summary === null ? 0 : summary.totalRequests);
  const [backend, ppDefault, ppFallback] = answers;
  const ours = backend === null ? { default: null, fallback: null } : backend;
  inconsistencies.add(
    Math.abs(requests(ours.default) - requests(ppDefault)) +
      Math.abs(requests(ours.fallback) - requests(ppFallback))
  );
  sleep(10);
}

export function teardown() {
  const now = Date.now();
  const query = summaryQuery(new Date(now - 360000), new Date(now));
  let ok = true;
  for (const processor of ['default', 'fallback']) {
    const admin = adminSummary(processor, query);
    ok = ok && admin !== null;
    processorRequests[processor].add(admin === null ? 0 : admin.totalRequests);
    processorAmount[processor].add(admin === null ? 0 : admin.totalAmount);
    feePerTransaction[processor].add(admin === null ? 0 : admin.feePerTransaction);
  }
  teardownOk.add(ok ? 1 : 0);
}

export function handleSummary(data) {
  return rawSummary(data, 'final');
}
