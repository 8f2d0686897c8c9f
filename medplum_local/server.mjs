// medplum-local: a small FHIR R4 server for the migration demo and tests, built on Medplum's own FHIR
// engine (@medplum/fhir-router FhirRouter + an extended MemoryRepository). It mimics a real Medplum
// server in what a migration loader touches: OAuth2 client credentials, /fhir/R4 REST, batch and
// transaction bundles, conditional writes, rate-limit headers and quota, async batches.
//
// Run: node_modules/.bin/node server.mjs   (Node >= 22.18; `make medplum` from the repository root)
// Settings (environment):
//   MEDPLUM_LOCAL_PORT                  port on 127.0.0.1 (default 8103; 0 = any free port)
//   MEDPLUM_CLIENT_ID / _SECRET         accepted client credentials (default local-migration-client / -secret)
//   MEDPLUM_LOCAL_CLIENTS               more accepted credentials, `id:secret,id:secret`. Each credential acts
//                                       in its own project (its own resources), as clients of different
//                                       projects of one Medplum server do
//   MEDPLUM_LOCAL_TOKEN_TTL             access token lifetime in seconds (default 3600)
//   MEDPLUM_LOCAL_TRANSACTION_BUNDLES   true|false: the project feature `transaction-bundles` (default true)
//   MEDPLUM_LOCAL_FHIR_QUOTA            FHIR interaction points per client per minute (default 0 = off)
//   MEDPLUM_LOCAL_QUOTA_WINDOW_SECONDS  length of the quota window (default 60, as Medplum)
//   MEDPLUM_LOCAL_POINTS_PER_SECOND     pace the server to this much work a second, in quota points
//                                       (default 0 = as fast as it goes; 80000 = about 800 writes/s)
//   MEDPLUM_LOCAL_LOG                   1 = log each request to stderr
//   MEDPLUM_LOCAL_DATA_FILE             NDJSON file the store persists to (default unset = memory only);
//                                       the projects of MEDPLUM_LOCAL_CLIENTS beside it, `<file>.<client id>`
//   MEDPLUM_LOCAL_SAVE_IDLE_SECONDS     save this long after the last write (default 2; at most 30 s of writes)
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import nodePath from 'node:path';
import { pipeline } from 'node:stream/promises';
import { pathToFileURL } from 'node:url';
import {
  accepted,
  badRequest,
  getStatus,
  normalizeOperationOutcome,
  notFound,
  OperationOutcomeError,
  unauthorized,
} from '@medplum/core';
import { FhirRouter } from '@medplum/fhir-router';
import { AsyncJobs } from './lib/async-jobs.mjs';
import { TokenIssuer } from './lib/auth.mjs';
import { loadDefinitions } from './lib/definitions.mjs';
import { RateLimiter } from './lib/ratelimit.mjs';
import { LocalRepository } from './lib/repository.mjs';

const FHIR_PREFIX = '/fhir/R4';
const MAX_BODY_BYTES = 50 * 1024 * 1024; // Medplum's default bundle size limit
const DEFAULT_SEARCH_COUNT = 20;
const MAX_SEARCH_COUNT = 1000;
const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const STORE_FORMAT = 'medplum-local-store';
const STORE_VERSION = 1;
const SAVE_MAX_DELAY_MS = 30_000; // while writes go on without a pause, save at least this often

export function readConfig(env = process.env) {
  const flag = (value, fallback) =>
    value === undefined || value === '' ? fallback : !['false', '0', 'off', 'no'].includes(value.toLowerCase());
  return {
    port: Number.parseInt(env.MEDPLUM_LOCAL_PORT || '8103', 10),
    clientId: env.MEDPLUM_CLIENT_ID || 'local-migration-client',
    clientSecret: env.MEDPLUM_CLIENT_SECRET || 'local-migration-secret',
    moreClients: parseClients(env.MEDPLUM_LOCAL_CLIENTS ?? ''),
    tokenTtl: Number.parseInt(env.MEDPLUM_LOCAL_TOKEN_TTL || '3600', 10),
    transactionBundles: flag(env.MEDPLUM_LOCAL_TRANSACTION_BUNDLES, true),
    fhirQuota: Number.parseInt(env.MEDPLUM_LOCAL_FHIR_QUOTA || '0', 10) || 0,
    quotaWindowSeconds: Number.parseInt(env.MEDPLUM_LOCAL_QUOTA_WINDOW_SECONDS || '60', 10) || 60,
    pointsPerSecond: nonNegative(Number.parseFloat(env.MEDPLUM_LOCAL_POINTS_PER_SECOND ?? ''), 0),
    log: flag(env.MEDPLUM_LOCAL_LOG, false),
    dataFile: env.MEDPLUM_LOCAL_DATA_FILE ? nodePath.resolve(env.MEDPLUM_LOCAL_DATA_FILE) : null,
    saveIdleSeconds: nonNegative(Number.parseFloat(env.MEDPLUM_LOCAL_SAVE_IDLE_SECONDS ?? ''), 2),
  };
}

/** `id:secret,id:secret` as [id, secret] pairs. */
function parseClients(text) {
  return text
    .split(',')
    .map((pair) => pair.trim())
    .filter(Boolean)
    .map((pair) => {
      const colon = pair.indexOf(':');
      if (colon <= 0) {
        throw new Error(`MEDPLUM_LOCAL_CLIENTS: "${pair}" is not id:secret`);
      }
      return [pair.slice(0, colon), pair.slice(colon + 1)];
    });
}

/** A stable project id for a client (the same after a restart, so a persisted store keeps its project). */
function projectIdOf(clientId) {
  const hex = createHash('sha256').update(`medplum-local-project:${clientId}`).digest('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

function nonNegative(value, fallback) {
  return Number.isFinite(value) && value >= 0 ? value : fallback;
}

/** Runs async functions one at a time: the in-memory store then behaves like serializable transactions.
 * With `pointsPerSecond`, each also holds the store until the work it did (repo.workPoints, in quota
 * points) has taken that long: a server with a real one's capacity, which more requests in flight do not
 * raise, where this one in memory writes tens of times faster than Medplum on PostgreSQL. */
function createSerializer(workPoints, pointsPerSecond) {
  let tail = Promise.resolve();
  // The moment the paced server is done with the work it was given (a clock, so that requests too
  // small for a timer add up instead of each waiting a whole millisecond).
  let busyUntil = 0;
  const paced = async (fn) => {
    const started = performance.now();
    const before = workPoints();
    try {
      return await fn();
    } finally {
      busyUntil = Math.max(busyUntil, started) + ((workPoints() - before) / pointsPerSecond) * 1000;
      const ms = busyUntil - performance.now();
      if (ms >= 1) {
        await new Promise((resolve) => setTimeout(resolve, ms));
      }
    }
  };
  return (fn) => {
    const result = tail.then(pointsPerSecond > 0 ? () => paced(fn) : fn);
    tail = result.catch(() => undefined);
    return result;
  };
}

export function createLocalMedplum(config) {
  loadDefinitions();
  const router = new FhirRouter();
  const clients = new Map([[config.clientId, config.clientSecret], ...config.moreClients]);
  const tokens = new TokenIssuer({ clients, ttlSeconds: config.tokenTtl, projectOf: projectIdOf });
  const limiter = new RateLimiter(config.fhirQuota, config.quotaWindowSeconds);
  // One project per client credential: its own store, async jobs and data file.
  const projects = new Map();
  // The paced server's capacity is the whole server's, shared by its projects.
  const serialize = createSerializer(
    () => [...projects.values()].reduce((sum, project) => sum + project.repo.workPoints, 0),
    config.pointsPerSecond
  );
  // `transactions: false` makes the stock BatchProcessor treat a transaction like a batch, as Medplum does
  // for projects without the transaction-bundles feature; `true` enables atomicity and the size limits.
  const requestConfig = { transactions: config.transactionBundles };
  const fhirRequest = (method, url, body, headers) => ({
    method,
    url,
    pathname: '',
    params: {},
    query: {},
    body,
    headers,
    config: requestConfig,
  });
  for (const clientId of clients.keys()) {
    const repo = new LocalRepository();
    const file = config.dataFile && (clientId === config.clientId ? config.dataFile : `${config.dataFile}.${clientId}`);
    // Binary content lives in files, one per Binary id, as Medplum keeps it in its storage (never in the
    // database): beside the data file when there is one, else in a temporary folder.
    const binaries = file ? `${file}.binaries` : fs.mkdtempSync(nodePath.join(os.tmpdir(), 'medplum-local-binaries-'));
    if (!file) {
      // Memory only: the Binaries go with the process, as its other resources do.
      process.on('exit', () => fs.rmSync(binaries, { recursive: true, force: true }));
    }
    fs.mkdirSync(binaries, { recursive: true });
    projects.set(clientId, {
      id: projectIdOf(clientId),
      binaries,
      repo,
      jobs: new AsyncJobs({
        repo,
        serialize,
        processBundle: (bundle) => router.handleRequest(fhirRequest('POST', '', bundle, {}), repo),
      }),
      // Throws a DataFileError (the server must not start) if a data file exists but cannot be loaded.
      persistence: file ? createPersistence({ repo, file, serialize, idleMs: config.saveIdleSeconds * 1000 }) : null,
    });
  }
  let baseUrl = `http://127.0.0.1:${config.port}/`;

  async function handle(req, res) {
    const url = new URL(req.url, 'http://127.0.0.1');
    const ip = req.socket.remoteAddress ?? 'unknown';
    let rateKey = 'ip:' + ip;
    let clientId;
    const send = (status, body, headers = {}) => {
      res.writeHead(status, { ...headers, RateLimit: limiter.header(rateKey, clientId) });
      res.end(body);
    };
    const sendJson = (status, value, headers = {}) =>
      send(status, JSON.stringify(value), { 'Content-Type': FHIR_JSON, ...headers });

    try {
      if (req.method === 'GET' && url.pathname === '/healthcheck') {
        return sendJson(200, { ok: true });
      }
      if (req.method === 'POST' && url.pathname === '/oauth2/token') {
        limiter.countAuthRequest(ip);
        const form = new URLSearchParams((await readBody(req)).toString('utf8'));
        const { status, body } = tokens.issue(form, req.headers.authorization);
        return sendJson(status, body, { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' });
      }
      if (url.pathname !== FHIR_PREFIX && !url.pathname.startsWith(FHIR_PREFIX + '/') && url.pathname !== '/auth/me') {
        return sendJson(404, notFound);
      }

      clientId = tokens.verify(req.headers.authorization);
      if (!clientId) {
        return sendJson(401, unauthorized, { 'WWW-Authenticate': 'Bearer' });
      }
      rateKey = 'client:' + clientId;
      limiter.countRequest(rateKey);
      const { repo, jobs, id: projectId, binaries } = projects.get(clientId);
      if (req.method === 'GET' && url.pathname === '/auth/me') {
        return sendJson(200, { project: { resourceType: 'Project', id: projectId, name: clientId } });
      }

      const path = url.pathname.slice(FHIR_PREFIX.length).replace(/^\/+|\/+$/g, '');

      // Binary upload: the raw bytes with their own Content-Type (not FHIR JSON), streamed to storage.
      const contentType = req.headers['content-type'] ?? '';
      if (req.method === 'POST' && path === 'Binary' && !/fhir\+json/.test(contentType)) {
        const upload = nodePath.join(binaries, `upload-${process.pid}-${Date.now()}-${Math.random().toString(16).slice(2)}`);
        await pipeline(req, fs.createWriteStream(upload));
        const [outcome, created] = await serialize(async () => {
          repo.budget = limiter.budgetFor(clientId);
          try {
            return await router.handleRequest(
              fhirRequest('POST', 'Binary', { resourceType: 'Binary', contentType: contentType || 'application/octet-stream' }, {}),
              repo
            );
          } finally {
            repo.budget = null;
          }
        });
        if (!created) {
          fs.rmSync(upload, { force: true });
          return sendJson(getStatus(outcome), outcome);
        }
        fs.renameSync(upload, nodePath.join(binaries, created.id));
        return sendJson(201, created, {
          ETag: `W/"${created.meta.versionId}"`,
          Location: `${baseUrl}fhir/R4/Binary/${created.id}/_history/${created.meta.versionId}`,
        });
      }
      // Binary read without asking for FHIR JSON: the stored bytes, streamed, with their Content-Type.
      const binaryRead = /^Binary\/([A-Za-z0-9-]+)$/.exec(path);
      if (req.method === 'GET' && binaryRead && !/fhir\+json/.test(req.headers.accept ?? '')) {
        const stored = nodePath.join(binaries, binaryRead[1]);
        if (fs.existsSync(stored)) {
          const binary = await serialize(() => repo.readResource('Binary', binaryRead[1]));
          res.writeHead(200, {
            'Content-Type': binary.contentType ?? 'application/octet-stream',
            'Content-Length': fs.statSync(stored).size,
            RateLimit: limiter.header(rateKey, clientId),
          });
          await pipeline(fs.createReadStream(stored), res);
          return undefined;
        }
      }
      const body = parseBody(await readBody(req), req.headers['content-type']);

      // Async job status: GET /fhir/R4/job/<id>/status
      const jobMatch = /^job\/([^/]+)\/status$/.exec(path);
      if (req.method === 'GET' && jobMatch) {
        const job = await serialize(() => repo.readResource('AsyncJob', jobMatch[1]));
        return sendJson(200, job);
      }

      // Async batch: 202 + Content-Location, processed in the background.
      if (req.method === 'POST' && path === '' && /respond-async/.test(req.headers.prefer ?? '')) {
        if (body?.resourceType !== 'Bundle') {
          return sendJson(400, badRequest('Not a bundle'));
        }
        const jobId = await jobs.start(body, baseUrl + 'fhir/R4/');
        return sendJson(202, accepted(`${baseUrl}fhir/R4/job/${jobId}/status`), {
          'Content-Location': `${baseUrl}fhir/R4/job/${jobId}/status`,
        });
      }

      // `POST <Type>/_search` with a form body is the same search as its GET (paging, _elements, 20 quota
      // points); Medplum's `next` link then repeats the whole query as a GET URL.
      const postedSearch = req.method === 'POST' && /^[A-Z][A-Za-z]+\/_search$/.test(path) && !body?.resourceType;
      const searchPath = postedSearch ? path.slice(0, -'/_search'.length) : path;
      const method = postedSearch ? 'GET' : req.method;
      const query = new URLSearchParams(postedSearch ? body : url.search);
      const isTypeSearch = method === 'GET' && /^[A-Z][A-Za-z]+$/.test(searchPath);
      if (isTypeSearch) {
        // Medplum pages searches: 20 by default, at most 1000 per page.
        const count = Number.parseInt(query.get('_count') ?? '', 10);
        query.set('_count', String(Number.isNaN(count) ? DEFAULT_SEARCH_COUNT : Math.min(count, MAX_SEARCH_COUNT)));
      }
      const queryString = query.toString();
      const routerUrl = searchPath + (queryString ? '?' + queryString : '');

      const [outcome, resource] = await serialize(async () => {
        repo.budget = limiter.budgetFor(clientId);
        repo.answeringSearch = isTypeSearch;
        try {
          return await router.handleRequest(fhirRequest(method, routerUrl, postedSearch ? undefined : body, req.headers), repo);
        } finally {
          repo.budget = null;
          repo.answeringSearch = false;
        }
      });
      const status = getStatus(outcome);
      if (!resource) {
        return sendJson(status, outcome);
      }
      if (isTypeSearch && resource.type === 'searchset') {
        addPagingLinks(resource, `${baseUrl}fhir/R4/${searchPath}`, query);
        keepElements(resource, query.get('_elements'));
      }
      // Binary read without asking for FHIR JSON returns the raw content, as Medplum does.
      if (resource.resourceType === 'Binary' && req.method === 'GET' && !/fhir\+json/.test(req.headers.accept ?? '')) {
        return send(status, Buffer.from(resource.data ?? '', 'base64'), {
          'Content-Type': resource.contentType ?? 'application/octet-stream',
        });
      }
      const headers = {};
      if (resource.meta?.versionId) {
        headers.ETag = `W/"${resource.meta.versionId}"`;
        headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
        if (status === 201) {
          headers.Location = `${baseUrl}fhir/R4/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
        }
      }
      return sendJson(status, resource, headers);
    } catch (err) {
      const outcome = normalizeOperationOutcome(err);
      const status = err instanceof OperationOutcomeError ? getStatus(outcome) : 500;
      if (status >= 500) {
        console.error('medplum-local: internal error', err);
      }
      return sendJson(status, outcome);
    }
  }

  const server = http.createServer((req, res) => {
    const started = Date.now();
    if (config.log) {
      res.on('finish', () =>
        console.error(`${req.method} ${req.url} ${res.statusCode} ${Date.now() - started}ms`)
      );
    }
    handle(req, res).catch((err) => {
      console.error('medplum-local: unhandled', err);
      if (!res.headersSent) {
        res.writeHead(500);
      }
      res.end();
    });
  });

  const defaultProject = projects.get(config.clientId);
  return {
    server,
    repo: defaultProject.repo,
    persistences: [...projects.values()].map((project) => project.persistence).filter(Boolean),
    setBaseUrl(value) {
      baseUrl = value;
    },
  };
}

// ---- persistence (MEDPLUM_LOCAL_DATA_FILE) ---------------------------------------------------------
//
// File format (NDJSON, one JSON value per line):
//   {"format":"medplum-local-store","version":1,"savedAt":"..."}
//   {"resourceType":"Patient","id":"...","current":1,"versions":[<oldest>, ..., <newest>]}   (one per id)
//   {"end":"medplum-local-store","resources":<number of id lines>}
// `current` is the index of the current version in `versions`, -1 for a deleted resource (history kept).
// The end line detects a truncated file. Writes go to a temporary file in the same folder, fsync, rename.

/** The data file exists but cannot be read or loaded, or its folder is not writable. */
export class DataFileError extends Error {}

/**
 * Loads the data file into `repo` (no validation, no conditional references, no quota).
 * @returns {{resources: number, versions: number} | null} null if the file does not exist
 */
export function loadStore(repo, file) {
  let buffer;
  try {
    buffer = fs.readFileSync(file);
  } catch (err) {
    if (err.code === 'ENOENT') {
      return null;
    }
    throw new DataFileError(`cannot read data file ${file}: ${err.message}`);
  }
  const fail = (lineNumber, message) => new DataFileError(`data file ${file} is corrupt: line ${lineNumber}: ${message}`);
  let header;
  let end;
  let resources = 0;
  let versions = 0;
  let lineNumber = 0;
  for (let start = 0; start < buffer.length; ) {
    let stop = buffer.indexOf(10, start);
    if (stop < 0) {
      stop = buffer.length;
    }
    lineNumber++;
    if (stop > start) {
      if (end) {
        throw fail(lineNumber, 'data after the end line');
      }
      let value;
      try {
        value = JSON.parse(buffer.toString('utf8', start, stop));
      } catch (err) {
        throw fail(lineNumber, `invalid JSON (${err.message})`);
      }
      if (!header) {
        if (value?.format !== STORE_FORMAT) {
          throw fail(lineNumber, `not a ${STORE_FORMAT} file (no header line {"format":"${STORE_FORMAT}",...})`);
        }
        if (value.version !== STORE_VERSION) {
          throw fail(lineNumber, `unsupported ${STORE_FORMAT} version ${JSON.stringify(value.version)}`);
        }
        header = value;
      } else if (value?.end === STORE_FORMAT) {
        end = value;
      } else {
        try {
          repo.loadStoredRecord(value);
        } catch (err) {
          throw fail(lineNumber, err.message);
        }
        resources++;
        versions += value.versions.length;
      }
    }
    start = stop + 1;
  }
  if (!header) {
    throw new DataFileError(`data file ${file} is corrupt: it is empty (no ${STORE_FORMAT} header line)`);
  }
  if (!end) {
    throw new DataFileError(`data file ${file} is corrupt: truncated after ${resources} resources (no end line)`);
  }
  if (end.resources !== resources) {
    throw new DataFileError(
      `data file ${file} is corrupt: the end line counts ${end.resources} resources, the file holds ${resources}`
    );
  }
  return { resources, versions };
}

/** Writes the whole store to `file` atomically (temporary file in the same folder, fsync, rename). */
export function saveStore(repo, file) {
  const folder = nodePath.dirname(file);
  const temporary = nodePath.join(folder, `.${nodePath.basename(file)}.${process.pid}.tmp`);
  const fd = fs.openSync(temporary, 'w');
  let resources = 0;
  let written = false;
  try {
    const parts = [];
    let size = 0;
    const flush = () => {
      const data = Buffer.from(parts.join(''), 'utf8');
      for (let offset = 0; offset < data.length; ) {
        offset += fs.writeSync(fd, data, offset);
      }
      parts.length = 0;
      size = 0;
    };
    const line = (value) => {
      const text = JSON.stringify(value);
      parts.push(text, '\n');
      size += text.length;
      if (size > 4 * 1024 * 1024) {
        flush();
      }
    };
    line({ format: STORE_FORMAT, version: STORE_VERSION, savedAt: new Date().toISOString() });
    for (const record of repo.storedRecords()) {
      line(record);
      resources++;
    }
    line({ end: STORE_FORMAT, resources });
    flush();
    fs.fsyncSync(fd);
    written = true;
  } finally {
    fs.closeSync(fd);
    if (!written) {
      fs.rmSync(temporary, { force: true });
    }
  }
  fs.renameSync(temporary, file);
  try {
    // Make the rename itself durable (not supported everywhere; the data is already synced).
    const folderFd = fs.openSync(folder, 'r');
    try {
      fs.fsyncSync(folderFd);
    } finally {
      fs.closeSync(folderFd);
    }
  } catch {
    // ignore
  }
  return resources;
}

/**
 * Loads `file` (if it exists) into `repo`, then saves the store `idleMs` after the last write (debounced,
 * but at least every SAVE_MAX_DELAY_MS while writes continue) and on flush() (clean shutdown). Saves run
 * through `serialize`, so never in the middle of a request (a half-done transaction is never written).
 */
function createPersistence({ repo, file, serialize, idleMs }) {
  const folder = nodePath.dirname(file);
  try {
    fs.mkdirSync(folder, { recursive: true });
    fs.accessSync(folder, fs.constants.W_OK);
  } catch (err) {
    throw new DataFileError(`cannot write data file ${file}: ${err.message}`);
  }
  const started = performance.now();
  const loaded = loadStore(repo, file);
  const seconds = ((performance.now() - started) / 1000).toFixed(2);
  console.error(
    loaded
      ? `medplum-local: loaded ${loaded.resources} resources (${loaded.versions} versions) from ${file} in ${seconds} s`
      : `medplum-local: data file ${file} does not exist yet; starting empty`
  );

  let dirty = false;
  let firstChangeAt = 0;
  let lastChangeAt = 0;
  let timer = null;

  const save = () =>
    serialize(() => {
      if (!dirty) {
        return null;
      }
      dirty = false;
      try {
        return saveStore(repo, file);
      } catch (err) {
        dirty = true;
        throw err;
      }
    });

  const arm = (delay) => {
    timer = setTimeout(onTimer, Math.max(0, delay));
    timer.unref();
  };
  function onTimer() {
    timer = null;
    const wait = Math.min(lastChangeAt + idleMs, firstChangeAt + SAVE_MAX_DELAY_MS) - Date.now();
    if (wait > 0) {
      arm(wait);
      return;
    }
    firstChangeAt = 0;
    save().catch((err) => {
      console.error(`medplum-local: could not save the store to ${file}: ${err.message}`);
      repo.onChange(); // retry later
    });
  }
  repo.onChange = () => {
    dirty = true;
    lastChangeAt = Date.now();
    if (!firstChangeAt) {
      firstChangeAt = lastChangeAt;
    }
    if (!timer) {
      arm(idleMs);
    }
  };

  return {
    file,
    /** Saves now if anything changed (waits for the request in progress); resolves to the count or null. */
    flush() {
      if (timer) {
        clearTimeout(timer);
        timer = null;
      }
      firstChangeAt = 0;
      return save();
    },
  };
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) {
      throw new OperationOutcomeError({
        resourceType: 'OperationOutcome',
        id: 'content-too-large',
        issue: [{ severity: 'error', code: 'too-long', details: { text: 'Request body too large' } }],
      });
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

function parseBody(buffer, contentType = '') {
  if (buffer.length === 0) {
    return undefined;
  }
  const text = buffer.toString('utf8');
  if (contentType.startsWith('application/x-www-form-urlencoded')) {
    return Object.fromEntries(new URLSearchParams(text));
  }
  try {
    return JSON.parse(text);
  } catch {
    throw new OperationOutcomeError(badRequest('Invalid JSON in request body'));
  }
}

/** `_elements=a,b`: each matched resource with only those top-level elements (and its type, id and
 * meta), as Medplum answers it. New objects: the stored resources are left as they are. */
function keepElements(bundle, elements) {
  if (!elements) {
    return;
  }
  const kept = new Set(['resourceType', 'id', 'meta', ...elements.split(',').map((name) => name.trim())]);
  for (const entry of bundle.entry ?? []) {
    if (entry.resource && entry.search?.mode !== 'include') {
      entry.resource = Object.fromEntries(Object.entries(entry.resource).filter(([name]) => kept.has(name)));
    }
  }
}

function addPagingLinks(bundle, searchUrl, query) {
  const count = Number.parseInt(query.get('_count'), 10);
  const offset = Number.parseInt(query.get('_offset') ?? '0', 10) || 0;
  bundle.link = [{ relation: 'self', url: `${searchUrl}?${query}` }];
  if (count > 0 && bundle.total !== undefined && offset + count < bundle.total) {
    const next = new URLSearchParams(query);
    next.set('_offset', String(offset + count));
    bundle.link.push({ relation: 'next', url: `${searchUrl}?${next}` });
  }
}

async function main() {
  const config = readConfig();
  let app;
  try {
    app = createLocalMedplum(config);
  } catch (err) {
    if (err instanceof DataFileError) {
      console.error(
        `medplum-local: cannot start: ${err.message}. Fix or remove the file (MEDPLUM_LOCAL_DATA_FILE); ` +
          'the server does not start with an empty store in its place.'
      );
      process.exit(1);
    }
    throw err;
  }
  app.server.listen(config.port, '127.0.0.1', () => {
    const { port } = app.server.address();
    app.setBaseUrl(`http://127.0.0.1:${port}/`);
    console.log(`medplum-local listening on http://127.0.0.1:${port}`);
  });
  app.server.on('error', (err) => {
    console.error('medplum-local: cannot listen:', err.message);
    process.exit(1);
  });
  let stopping = false;
  const shutdown = (signal) => {
    if (stopping) {
      if (app.persistences.length) {
        console.error(`medplum-local: ${signal} again, exiting without saving`);
        process.exit(1);
      }
      return;
    }
    stopping = true;
    console.error(`medplum-local: ${signal}, shutting down`);
    if (!app.persistences.length) {
      app.server.close(() => process.exit(0));
      app.server.closeAllConnections();
      setTimeout(() => process.exit(0), 2000).unref();
      return;
    }
    app.server.close();
    app.server.closeAllConnections();
    // Waits for the request in progress (the serializer), then writes each project's store.
    const flushed = app.persistences.map((persistence) =>
      persistence.flush().then(
        (saved) => {
          console.error(
            saved === null
              ? `medplum-local: no changes to save to ${persistence.file}`
              : `medplum-local: saved ${saved} resources to ${persistence.file}`
          );
          return true;
        },
        (err) => {
          console.error(`medplum-local: could not save the store to ${persistence.file}: ${err.message}`);
          return false;
        }
      )
    );
    Promise.all(flushed).then((results) => process.exit(results.every(Boolean) ? 0 : 1));
  };
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGTERM', () => shutdown('SIGTERM'));
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  main();
}
