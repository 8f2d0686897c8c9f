// `Prefer: respond-async` batches, shaped like Medplum's: the request answers 202 at once with
// Content-Location <base>/fhir/R4/job/<id>/status; that URL serves an AsyncJob resource whose status
// goes accepted -> completed (or error). When completed, AsyncJob.output is a Parameters whose
// `results` parameter references a Binary holding the batch-response Bundle.
// Async work is not charged to the client's FHIR quota, and a failed job is not retried.
import { getStatus, isOk, normalizeOperationOutcome } from '@medplum/core';

export class AsyncJobs {
  /**
   * @param {object} deps
   * @param {import('./repository.mjs').LocalRepository} deps.repo
   * @param {(fn: () => Promise<any>) => Promise<any>} deps.serialize runs fn when no other request is in flight
   * @param {(bundle: object) => Promise<any[]>} deps.processBundle runs the bundle through the FHIR router
   */
  constructor({ repo, serialize, processBundle }) {
    this.repo = repo;
    this.serialize = serialize;
    this.processBundle = processBundle;
  }

  /** Records an accepted job for `bundle` and schedules it; resolves to the AsyncJob id. */
  async start(bundle, requestUrl) {
    const job = await this.serialize(() =>
      this.uncharged(() =>
        this.repo.createResource({
          resourceType: 'AsyncJob',
          status: 'accepted',
          requestTime: new Date().toISOString(),
          request: requestUrl,
        })
      )
    );
    // Run later, so the client sees "accepted" first, as it would on a real server with a worker queue.
    setTimeout(() => {
      this.run(job.id, bundle).catch((err) => console.error('async job failed', job.id, err));
    }, 50);
    return job.id;
  }

  async run(jobId, bundle) {
    await this.serialize(() =>
      this.uncharged(async () => {
        let outcome;
        let resultBundle;
        try {
          [outcome, resultBundle] = await this.processBundle(bundle);
        } catch (err) {
          outcome = normalizeOperationOutcome(err);
        }
        const job = await this.repo.readResource('AsyncJob', jobId);
        if (isOk(outcome) && resultBundle) {
          const binary = await this.repo.createResource({
            resourceType: 'Binary',
            contentType: 'application/fhir+json',
            data: Buffer.from(JSON.stringify(resultBundle), 'utf8').toString('base64'),
          });
          await this.repo.updateResource({
            ...job,
            status: 'completed',
            transactionTime: new Date().toISOString(),
            output: {
              resourceType: 'Parameters',
              parameter: [{ name: 'results', valueReference: { reference: `Binary/${binary.id}` } }],
            },
          });
        } else {
          await this.repo.updateResource({
            ...job,
            status: 'error',
            output: {
              resourceType: 'Parameters',
              parameter: [
                { name: 'outcome', resource: outcome },
                { name: 'status', valueInteger: getStatus(outcome) },
              ],
            },
          });
        }
      })
    );
  }

  /** Runs fn with quota charging switched off (async work does not count against the FHIR quota). */
  async uncharged(fn) {
    const saved = this.repo.budget;
    this.repo.budget = null;
    try {
      return await fn();
    } finally {
      this.repo.budget = saved;
    }
  }
}
