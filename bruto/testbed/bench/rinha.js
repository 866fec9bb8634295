// The Rinha de Backend 2025 load test, rewritten from the rules (docs/CHALLENGE.md §3).
//
//   k6 run -e MAX_REQUESTS=550 -e SUMMARY_FILE=/tmp/summary.json tools/rinha.js
//
// Environment: BACKEND_URL (http://127.0.0.1:9999), PP_DEFAULT_URL
// (http://127.0.0.1:8001), PP_FALLBACK_URL (http://127.0.0.1:8002), TOKEN (123),
// MAX_REQUESTS (550), SUMMARY_FILE (where handleSummary writes the raw figures).
//
// This script only measures; the scoring of §4 is done in Python
// (bruto.testbed.bench.run.score) from the JSON written by handleSummary, so it can be
// unit tested on a recorded summary.

import http from 'k6/http';
import { sleep } from 'k6';
import { randomBytes } from 'k6/crypto';
import { Counter, Gauge } from 'k6/metrics';

const BACKEND = __ENV.BACKEND_URL || 'http://127.0.0.1:9999';
const PP = {
  default: __ENV.PP_DEFAULT_URL || 'http://127.0.0.1:8001',
  fallback: __ENV.PP_FALLBACK_URL || 'http://127.0.0.1:8002',
};
const TOKEN = __ENV.TOKEN || '123';
const MAX_REQUESTS = parseInt(__ENV.MAX_REQUESTS || '550', 10);
const SUMMARY_FILE = __ENV.SUMMARY_FILE || 'rinha-summary.json';

// Every call of the official test carries this timeout.
const TIMEOUT = '1500ms';
const JSON_HEADERS = { 'Content-Type': 'application/json' };
const ADMIN_HEADERS = { 'Content-Type': 'application/json', 'X-Rinha-Token': TOKEN };

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

const paymentsOk = new Counter('payments_ok');
const paymentsFailed = new Counter('payments_failed');
const inconsistencies = new Counter('inconsistencies');
const probesFailed = new Counter('consistency_probes_failed');
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
const teardownOk = new Gauge('teardown_ok');

const scenarios = {
  payments: {
    executor: 'ramping-vus',
    exec: 'payment',
    startVUs: 1,
    stages: [{ duration: '60s', target: MAX_REQUESTS }],
  },
  consistency: {
    executor: 'constant-vus',
    exec: 'consistency',
    vus: 1,
    duration: '60s',
  },
};
STAGES.forEach((stage, index) => {
  scenarios[`stage_${stage[0]}s`] = {
    executor: 'per-vu-iterations',
    exec: 'configureProcessors',
    vus: 1,
    iterations: 1,
    startTime: `${stage[0]}s`,
    env: { STAGE: String(index) },
  };
});

export const options = {
  scenarios,
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)'],
  // NOTE: k6 reports a sub-metric in the summary only when a threshold names
  // it; these cannot fail. The first is the p99 of the score; the others say
  // where the slow requests are (our POSTs, the probes, the admin calls).
  thresholds: {
    'http_req_duration{expected_response:true}': ['max>=0'],
    'http_req_duration{scenario:payments}': ['max>=0'],
    'http_req_duration{scenario:consistency}': ['max>=0'],
  },
};

function uuidv4() {
  const bytes = new Uint8Array(randomBytes(16));
  bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
  bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
  const hex = Array.from(bytes, (b) => (b < 16 ? '0' : '') + b.toString(16)).join('');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function adminPut(processor, config, body) {
  return http.put(`${PP[processor]}/admin/configurations/${config}`, JSON.stringify(body), {
    headers: ADMIN_HEADERS,
    timeout: TIMEOUT,
  });
}

function summaryQuery(from, to) {
  return `from=${from.toISOString()}&to=${to.toISOString()}`;
}

function parseJson(response) {
  if (response.status !== 200) {
    return null;
  }
  try {
    return response.json();
  } catch (error) {
    return null;
  }
}

export function setup() {
  for (const processor of ['default', 'fallback']) {
    adminPut(processor, 'token', { token: TOKEN });
    http.post(`${PP[processor]}/admin/purge-payments`, null, {
      headers: ADMIN_HEADERS,
      timeout: TIMEOUT,
    });
  }
  // Optional in the challenge: a failure here is tolerated.
  http.post(`${BACKEND}/purge-payments`, null, { timeout: TIMEOUT });
}

export function payment() {
  const body = JSON.stringify({ correlationId: uuidv4(), amount: 19.9 });
  const response = http.post(`${BACKEND}/payments`, body, {
    headers: JSON_HEADERS,
    timeout: TIMEOUT,
  });
  if ([200, 201, 202, 204].includes(response.status)) {
    paymentsOk.add(1);
  } else {
    paymentsFailed.add(1);
  }
  sleep(1);
}

export function configureProcessors() {
  const [, defaultDelay, defaultFailing, fallbackDelay, fallbackFailing] = STAGES[
    parseInt(__ENV.STAGE, 10)
  ];
  adminPut('default', 'delay', { delay: defaultDelay });
  adminPut('default', 'failure', { failure: defaultFailing });
  adminPut('fallback', 'delay', { delay: fallbackDelay });
  adminPut('fallback', 'failure', { failure: fallbackFailing });
}

export function consistency() {
  sleep(10);
  const now = Date.now();
  const query = summaryQuery(new Date(now - 15000), new Date(now - 1500));
  const params = { timeout: TIMEOUT };
  const adminParams = { headers: ADMIN_HEADERS, timeout: TIMEOUT };
  const [backend, ppDefault, ppFallback] = http
    .batch([
      ['GET', `${BACKEND}/payments-summary?${query}`, null, params],
      ['GET', `${PP.default}/admin/payments-summary?${query}`, null, adminParams],
      ['GET', `${PP.fallback}/admin/payments-summary?${query}`, null, adminParams],
    ])
    .map(parseJson);
  if (backend === null || ppDefault === null || ppFallback === null) {
    probesFailed.add(1);
    return;
  }
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
    const admin = parseJson(
      http.get(`${PP[processor]}/admin/payments-summary?${query}`, {
        headers: ADMIN_HEADERS,
        timeout: TIMEOUT,
      })
    );
    ok = ok && admin !== null;
    feePerTransaction[processor].add(admin === null ? 0 : admin.feePerTransaction);
    backendRequests[processor].add(backend === null ? 0 : backend[processor].totalRequests);
    backendAmount[processor].add(backend === null ? 0 : backend[processor].totalAmount);
  }
  teardownOk.add(ok ? 1 : 0);
}

export function handleSummary(data) {
  // The raw figures only; bruto.testbed.bench.run.score turns them into the §4 score.
  const raw = { metrics: data.metrics, state: data.state };
  return { [SUMMARY_FILE]: JSON.stringify(raw, null, 1) };
}
