// The Rinha de Backend 2025 preview load test, rewritten from the rules (docs/CHALLENGE.md §3).
//
//   k6 run -e MAX_REQUESTS=550 -e SUMMARY_FILE=/tmp/summary.json rinha.js
//
// Environment: MAX_REQUESTS (550), and rinha-common.js's (where the backend
// and the processors are, the token, SUMMARY_FILE).
//
// This script only measures; the scoring of §4 is done in Python
// (bruto.testbed.bench.score) from the JSON written by handleSummary, so it can be
// unit tested on a recorded summary.

import http from 'k6/http';
import { sleep } from 'k6';
import { Gauge } from 'k6/metrics';
import {
  BACKEND, TIMEOUT, adminSummary, configure, inconsistencies, parseJson, pay, probe, probesFailed,
  rawSummary, scenarios, summaryOptions, summaryQuery, teardownOk,
} from './rinha-common.js';

export { setup } from './rinha-common.js';

const MAX_REQUESTS = parseInt(__ENV.MAX_REQUESTS || '550', 10);
const DURATION_S = 60;

// The processors' configuration over time (docs/CHALLENGE.md §3):
// [start second, default delay, default failing, fallback delay, fallback failing].
const STAGES = [
  [1, 0, false, 0, false],
  [10, 100, false, 0, false],
  [20, 100, true, 0, false],
  [30, 2000, true, 1000, true],
  [40, 20, false, 20, false],
  [50, 0, false, 5000, false],
];

// Set once, by teardown: the backend's summary and the processors' fees.
const backendRequests = {
  default: new Gauge('backend_default_requests'),
  fallback: new Gauge('backend_fallback_requests'),
};
const backendAmount = {
  default: new Gauge('backend_default_amount'),
  fallback: new Gauge('backend_fallback_amount'),
};
const feePerTransaction = {
  default: new Gauge('fee_default'),
  fallback: new Gauge('fee_fallback'),
};

export const options = {
  scenarios: scenarios(DURATION_S, MAX_REQUESTS, STAGES),
  ...summaryOptions,
};

export function payment() {
  pay(19.9);
}

export function configureProcessors() {
  configure(STAGES);
}

export function consistency() {
  sleep(10);
  const now = Date.now();
  const [backend, ppDefault, ppFallback] = probe(new Date(now - 15000), new Date(now - 1500));
  if (backend === null || ppDefault === null || ppFallback === null) {
    probesFailed.add(1);
    return;
  }
  // The preview adds the differences, then takes the absolute value.
  const difference =
    backend.default.totalRequests -
    ppDefault.totalRequests +
    (backend.fallback.totalRequests - ppFallback.totalRequests);
  inconsistencies.add(Math.abs(difference));
}

export function teardown() {
  const now = Date.now();
  const query = summaryQuery(new Date(now - 70000), new Date(now));
  const backend = parseJson(
    http.get(`${BACKEND}/payments-summary?${query}`, { timeout: TIMEOUT })
  );
  let ok = backend !== null;
  for (const processor of ['default', 'fallback']) {
    const admin = adminSummary(processor, query);
    ok = ok && admin !== null;
    feePerTransaction[processor].add(admin === null ? 0 : admin.feePerTransaction);
    backendRequests[processor].add(backend === null ? 0 : backend[processor].totalRequests);
    backendAmount[processor].add(backend === null ? 0 : backend[processor].totalAmount);
  }
  teardownOk.add(ok ? 1 : 0);
}

export function handleSummary(data) {
  return rawSummary(data, 'preview');
}
