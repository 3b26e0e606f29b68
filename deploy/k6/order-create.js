// deploy/k6/order-create.js — the order intake load test: `POST /v1/orders` at a constant arrival
// rate, each order with a random pickup and dropoff around a city centre, checking that every
// answer is `201 Created` with an `X-Request-ID`; thresholds on the checks and the p99 latency
// make k6 exit non-zero when they fail.
//
// Inputs, from the environment (k6 run -e NAME=value, or exported variables):
//   JWL_URL        the API's base URL                          default http://127.0.0.1:8080
//   TOKEN          a bearer token with `orders:write` (or admin): `jwl up` prints one,
//                  `jwl token --sub customer-1 --scope orders:write` mints one     (required)
//   RATE           orders per second                           default 10
//   DURATION       how long to send them (k6 duration)         default 30s
//   SKU            the SKU every order buys                    default sku-1
//   CENTER_LAT/LON the city centre (People's Square, Shanghai) default 31.2304 / 121.4737
//   RADIUS_KM      how far from the centre positions fall      default 10
//   P99_MS         the p99 latency threshold of the requests   default 500
//   CHECKS_RATE    the share of checks that must pass          default 0.99
//   MAX_VUS        most requests in flight                     default 200
//
// One token is one caller, whose orders the service accepts at up to JWL_INGEST_CALLER_RATE a
// second (20 by default; beyond that `429`): raise it on the system for higher rates.
//
//   k6 run -e JWL_URL=http://127.0.0.1:8080 -e TOKEN=$TOKEN -e RATE=20 -e DURATION=30s \
//       deploy/k6/order-create.js

import http from 'k6/http';
import { check, fail } from 'k6';

const URL = (__ENV.JWL_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const TOKEN = __ENV.TOKEN || '';
const RATE = parseInt(__ENV.RATE || '10', 10);
const DURATION = __ENV.DURATION || '30s';
const SKU = __ENV.SKU || 'sku-1';
const CENTER_LAT = parseFloat(__ENV.CENTER_LAT || '31.2304');
const CENTER_LON = parseFloat(__ENV.CENTER_LON || '121.4737');
const RADIUS_KM = parseFloat(__ENV.RADIUS_KM || '10');
const P99_MS = parseFloat(__ENV.P99_MS || '500');
const CHECKS_RATE = parseFloat(__ENV.CHECKS_RATE || '0.99');
const MAX_VUS = parseInt(__ENV.MAX_VUS || '200', 10);

export const options = {
  scenarios: {
    order_create: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: Math.min(MAX_VUS, Math.max(2, RATE)),
      maxVUs: MAX_VUS,
    },
  },
  thresholds: {
    checks: [`rate>=${CHECKS_RATE}`],
    'http_req_duration{name:POST /v1/orders}': [`p(99)<${P99_MS}`],
    // a request that never got an answer fails the run too
    http_req_failed: [`rate<=${(1 - CHECKS_RATE).toFixed(6)}`],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  if (!TOKEN) {
    fail('TOKEN is not set: export TOKEN=<bearer token> (jwl up prints one)');
  }
  if (!(RATE > 0)) {
    fail(`RATE must be a positive number of orders per second, is ${__ENV.RATE}`);
  }
}

// A random position at most RADIUS_KM from the centre (uniform over the disc).
function around() {
  const distanceKm = RADIUS_KM * Math.sqrt(Math.random());
  const bearing = 2 * Math.PI * Math.random();
  const kmPerDegreeLat = 111.32;
  const kmPerDegreeLon = 111.32 * Math.cos((CENTER_LAT * Math.PI) / 180);
  const lat = CENTER_LAT + (distanceKm * Math.cos(bearing)) / kmPerDegreeLat;
  const lon = CENTER_LON + (distanceKm * Math.sin(bearing)) / kmPerDegreeLon;
  return { lat: Math.round(lat * 1e6) / 1e6, lon: Math.round(lon * 1e6) / 1e6 };
}

export default function () {
  const body = JSON.stringify({
    items: [{ sku: SKU, qty: 1 + Math.floor(Math.random() * 3), unit_price_cents: 1299 }],
    pickup: around(),
    dropoff: around(),
    payment_token: 'tok_ok',
  });
  const response = http.post(`${URL}/v1/orders`, body, {
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${TOKEN}` },
    tags: { name: 'POST /v1/orders' },
  });
  check(response, {
    'status is 201': (r) => r.status === 201,
    'has X-Request-ID': (r) => !!r.headers['X-Request-Id'],
  });
}
