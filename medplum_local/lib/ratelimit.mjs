// Rate limits as a real Medplum server reports and enforces them.
//  - "requests": every HTTP request, per client (or per IP before login), 60,000 a minute.
//  - "fhirInteractions": an optional per-client FHIR interaction quota in points per minute
//    (create/update/delete 100, search 20, read 1), charged by LocalRepository as it works.
//    0 = off (the header then reports the full default budget, never decreasing).
// Both use fixed one-minute windows. Every response carries
//   RateLimit: "requests";r=<remaining>;t=<seconds to reset>, "fhirInteractions";r=<remaining>;t=<seconds>
import { deepClone, OperationOutcomeError, tooManyRequests } from '@medplum/core';

const WINDOW_MS = 60_000;
export const REQUESTS_PER_MINUTE = 60_000;
export const AUTH_REQUESTS_PER_MINUTE = 160;
const DEFAULT_FHIR_QUOTA = 50_000;

/** A counter that resets one minute after its window opened. */
class Window {
  constructor(limit, windowMs = WINDOW_MS) {
    this.limit = limit;
    this.windowMs = windowMs;
    this.used = 0;
    this.resetAt = 0;
  }

  roll(now = Date.now()) {
    if (now >= this.resetAt) {
      this.used = 0;
      this.resetAt = now + this.windowMs;
    }
  }

  remaining() {
    this.roll();
    return Math.max(0, this.limit - this.used);
  }

  secondsToReset() {
    this.roll();
    return Math.max(1, Math.ceil((this.resetAt - Date.now()) / 1000));
  }

  /** Consumes `amount`, or throws a 429 OperationOutcomeError if that would exceed the limit. As on
   * Medplum, a refusal spends the window: every later request of the window is refused too (in a batch,
   * every entry from the first 429 on), and the outcome's diagnostics carry the limiter's state as JSON,
   * `_msBeforeNext` included. */
  consume(amount) {
    this.roll();
    if (this.used + amount > this.limit) {
      this.used = Math.max(this.used, this.limit);
      const outcome = deepClone(tooManyRequests);
      outcome.issue[0].diagnostics = JSON.stringify({
        _remainingPoints: 0,
        _msBeforeNext: Math.max(0, this.resetAt - Date.now()),
        _consumedPoints: this.used + amount,
        _isFirstInDuration: false,
        limit: this.limit,
      });
      throw new OperationOutcomeError(outcome);
    }
    this.used += amount;
  }
}

export class RateLimiter {
  /**
   * @param {number} fhirQuota points per client and window; 0 = no quota
   * @param {number} quotaWindowSeconds the quota window (Medplum's is a minute; tests shorten it)
   */
  constructor(fhirQuota, quotaWindowSeconds = 60) {
    this.fhirQuota = fhirQuota;
    this.quotaWindowMs = quotaWindowSeconds * 1000;
    this.requestWindows = new Map();
    this.authWindows = new Map();
    this.quotaWindows = new Map();
  }

  static window(map, key, limit, windowMs = WINDOW_MS) {
    let w = map.get(key);
    if (!w) {
      w = new Window(limit, windowMs);
      map.set(key, w);
    }
    return w;
  }

  /** Counts one HTTP request for `key`; throws 429 past the limit. */
  countRequest(key) {
    RateLimiter.window(this.requestWindows, key, REQUESTS_PER_MINUTE).consume(1);
  }

  /** Counts one /oauth2/token request for an IP; throws 429 past 160 a minute. */
  countAuthRequest(ip) {
    RateLimiter.window(this.authWindows, ip, AUTH_REQUESTS_PER_MINUTE).consume(1);
  }

  /** The budget LocalRepository charges while serving `clientId` (null when the quota is off). */
  budgetFor(clientId) {
    if (!this.fhirQuota) {
      return null;
    }
    const w = RateLimiter.window(this.quotaWindows, clientId, this.fhirQuota, this.quotaWindowMs);
    return { charge: (points) => w.consume(points) };
  }

  header(requestKey, clientId) {
    const requests = RateLimiter.window(this.requestWindows, requestKey, REQUESTS_PER_MINUTE);
    let fhir = `"fhirInteractions";r=${DEFAULT_FHIR_QUOTA};t=60`;
    if (this.fhirQuota && clientId) {
      const w = RateLimiter.window(this.quotaWindows, clientId, this.fhirQuota, this.quotaWindowMs);
      fhir = `"fhirInteractions";r=${w.remaining()};t=${w.secondsToReset()}`;
    } else if (this.fhirQuota) {
      fhir = `"fhirInteractions";r=${this.fhirQuota};t=${this.quotaWindowMs / 1000}`;
    }
    return `"requests";r=${requests.remaining()};t=${requests.secondsToReset()}, ${fhir}`;
  }
}
