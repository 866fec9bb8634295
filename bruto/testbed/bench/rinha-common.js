// What the two load tests share (rinha.js, the preview; rinha-final.js, the
// final: docs/CHALLENGE.md §3 and §3b): where things are, the calls, the
// payments loop, the processors' stages, and the raw summary.
//
// Environment: BACKEND_URL (http://127.0.0.1:9999), PP_DEFAULT_URL
// (http://127.0.0.1:8001), PP_FALLBACK_URL (http://127.0.0.1:8002), TOKEN (123),
// SUMMARY_FILE (where handleSummary writes the raw figures), TIME_SCALE (1: a
// smaller value compresses the ramp and the stages, for a short smoke run
// only; a scaled run is not the challenge's).

import http from 'k6/http';
import { sleep } from 'k6';
import { randomBytes } from 'k6/crypto';
import { Counter, Gauge } from 'k6/metrics';

export const BACKEND = __ENV.BACKEND_URL || 'http://127.0.0.1:9999';
export const PP = {
  default: __ENV.PP_DEFAULT_URL || 'http://127.0.0.1:8001',
  fallback: __ENV.PP_FALLBACK_URL || 'http://127.0.0.1:8002',
};
export const TOKEN = __ENV.TOKEN || '123';
export const TIME_SCALE = parseFloat(__ENV.TIME_SCALE || '1');
const SUMMARY_FILE = __ENV.SUMMARY_FILE || 'rinha-summary.json';

// Every call of the official tests carries this timeout.
export const TIMEOUT = '1500ms';
const JSON_HEADERS = { 'Content-Type': 'application/json' };
export const ADMIN_HEADERS = { 'Content-Type': 'application/json', 'X-Rinha-Token': TOKEN };
export const ADMIN_PARAMS = { headers: ADMIN_HEADERS, timeout: TIMEOUT };

export const paymentsOk = new Counter('payments_ok');
export const paymentsFailed = new Counter('payments_failed');
export const inconsistencies = new Counter('inconsistencies');
export const probesFailed = new Counter('consistency_probes_failed');
export const teardownOk = new Gauge('teardown_ok');

/** A duration of the timeline in seconds, as k6 wants it, compressed by TIME_SCALE. */
export function scaled(seconds) {
  return `${Math.round(seconds * TIME_SCALE * 1000)}ms`;
}

/**
 * The scenarios of a test lasting `seconds`: the payments ramp from 1 to
 * `maxRequests` users, the consistency probe's one user, and one scenario per
 * stage setting the processors at its start
 * (a stage: [start second, default delay, default failing, fallback delay, fallback failing]).
 */
export function scenarios(seconds, maxRequests, stages, paymentsExtra = {}) {
  const all = {
    payments: {
      executor: 'ramping-vus',
      exec: 'payment',
      startVUs: 1,
      stages: [{ duration: scaled(seconds), target: maxRequests }],
      ...paymentsExtra,
    },
    consistency: {
      executor: 'constant-vus',
      exec: 'consistency',
      vus: 1,
      duration: scaled(seconds),
    },
  };
  stages.forEach((stage, index) => {
    all[`stage_${stage[0]}s`] = {
      executor: 'per-vu-iterations',
      exec: 'configureProcessors',
      vus: 1,
      iterations: 1,
      startTime: scaled(stage[0]),
      env: { STAGE: String(index) },
    };
  });
  return all;
}

export const summaryOptions = {
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
  return http.put(`${PP[processor]}/admin/configurations/${config}`, JSON.stringify(body), ADMIN_PARAMS);
}

export function summaryQuery(from, to) {
  return `from=${from.toISOString()}&to=${to.toISOString()}`;
}

export function parseJson(response) {
  if (response.status !== 200) {
    return null;
  }
  try {
    return response.json();
  } catch (error) {
    return null;
  }
}

export function adminSummary(processor, query) {
  return parseJson(http.get(`${PP[processor]}/admin/payments-summary?${query}`, ADMIN_PARAMS));
}

/** Both processors' admin summaries and the backend's, asked at once for the same window. */
export function probe(from, to) {
  const query = summaryQuery(from, to);
  return http
    .batch([
      ['GET', `${BACKEND}/payments-summary?${query}`, null, { timeout: TIMEOUT }],
      ['GET', `${PP.default}/admin/payments-summary?${query}`, null, ADMIN_PARAMS],
      ['GET', `${PP.fallback}/admin/payments-summary?${query}`, null, ADMIN_PARAMS],
    ])
    .map(parseJson);
}

export function setup() {
  for (const processor of ['default', 'fallback']) {
    adminPut(processor, 'token', { token: TOKEN });
    http.post(`${PP[processor]}/admin/purge-payments`, null, ADMIN_PARAMS);
  }
  // Optional in the challenge: a failure here is tolerated.
  http.post(`${BACKEND}/purge-payments`, null, { timeout: TIMEOUT });
}

/** One iteration of a payments user: POST a payment of `amount`, then sleep 1 s. */
export function pay(amount) {
  const body = JSON.stringify({ correlationId: uuidv4(), amount });
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

/** The processors' configuration of the stage this scenario starts (its STAGE). */
export function configure(stages) {
  const [, defaultDelay, defaultFailing, fallbackDelay, fallbackFailing] = stages[
    parseInt(__ENV.STAGE, 10)
  ];
  adminPut('default', 'delay', { delay: defaultDelay });
  adminPut('default', 'failure', { failure: defaultFailing });
  adminPut('fallback', 'delay', { delay: fallbackDelay });
  adminPut('fallback', 'failure', { failure: fallbackFailing });
}

/** The raw figures only; bruto.testbed.bench.score turns them into the score of `script`. */
export function rawSummary(data, script) {
  const raw = { script, time_scale: TIME_SCALE, metrics: data.metrics, state: data.state };
  return { [SUMMARY_FILE]: JSON.stringify(raw, null, 1) };
}
