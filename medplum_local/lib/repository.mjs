// LocalRepository: the stock @medplum/fhir-router MemoryRepository, with the gaps closed that separate it
// from a real Medplum server in everything a migration loader touches:
//  - identifier token searches through an exact, escape-aware index (see identifier-index.mjs);
//  - conditional references ("Patient?identifier=SYS|VAL") resolved to "Patient/<id>" on every write;
//  - structural validation (validateResource) on create and update;
//  - an update whose content equals the stored version creates no new version;
//  - update by id of an unknown resource is 404 (no create-on-update), client ids on POST are ignored;
//  - withTransaction() really rolls back (an undo journal), so transaction bundles are atomic;
//  - every interaction is charged against an optional per-client FHIR quota (see ratelimit.mjs), and
//    counted as the work the server did (server.mjs can pace itself by it);
//  - the store (every version of every resource) can be dumped and loaded back (storedRecords(),
//    loadStoredRecord()); server.mjs writes it to MEDPLUM_LOCAL_DATA_FILE.
import {
  badRequest,
  deepClone,
  deepEquals,
  evalFhirPath,
  globalSchema,
  matchesSearchRequest,
  notFound,
  OperationOutcomeError,
  Operator,
  parseSearchRequest,
  stringify,
  validateResource,
} from '@medplum/core';
import { FhirRepository, getExtraEntries, MemoryRepository } from '@medplum/fhir-router';
import { IdentifierIndex, isIndexedType } from './identifier-index.mjs';

/** FHIR interaction costs in quota points, as on the real server. */
export const POINTS = { read: 1, search: 20, write: 100 };

const CONDITIONAL_REFERENCE = /^[A-Z][A-Za-z]+\?./;

export class LocalRepository extends MemoryRepository {
  constructor() {
    super();
    this.identifierIndex = new IdentifierIndex();
    /** Undo records of writes inside withTransaction(): {resourceType, id, previous, historyLength}. */
    this.journal = [];
    this.transactionDepth = 0;
    /** The quota budget of the client being served ({charge(points)}), or null for uncharged work. */
    this.budget = null;
    /** Every interaction's points, charged or not, plus one per resource a search returns: the work done. */
    this.workPoints = 0;
    /** Called after every change of the store (write, delete, rollback); server.mjs schedules a save. */
    this.onChange = null;
    /** True while server.mjs answers a search request: its page is only serialized, never changed, so
     * the stored resources go out as they are instead of as copies (a census reads every one). */
    this.answeringSearch = false;
  }

  /** A stored resource for a search result: itself while a search is being answered, else a copy
   * (the repository's own searches, such as conditional updates, may change what they find). */
  searchCopy(resource) {
    return this.answeringSearch ? resource : deepClone(resource);
  }

  changed() {
    this.storeVersion = (this.storeVersion ?? 0) + 1;
    this.onChange?.();
  }

  charge(points) {
    this.budget?.charge(points);
    this.workPoints += points;
  }

  /** The stored (current) version, without cloning and without charging; undefined if absent. */
  getStored(resourceType, id) {
    return id === undefined ? undefined : this.resources.get(resourceType)?.get(id);
  }

  // ---- writes ------------------------------------------------------------------------------------

  // MemoryRepository.updateResource() and patchResource() both end up here with update=true.
  async createResource(resource, options, update = false) {
    this.charge(POINTS.write);
    if (!update && !options?.assignedId && resource.id !== undefined) {
      // Medplum assigns ids itself; a client-supplied id on create is ignored.
      resource = { ...resource };
      delete resource.id;
    }
    await this.resolveConditionalReferences(resource);

    const previous = update ? this.getStored(resource.resourceType, resource.id) : undefined;
    if (update && !previous) {
      throw new OperationOutcomeError(notFound);
    }
    if (previous && isUnchanged(previous, resource)) {
      // Same content as stored: no new version, no new history entry (as the real server).
      return deepClone(previous);
    }
    validateOrThrow(resource);

    const historyLength = this.history.get(resource.resourceType)?.get(resource.id)?.length ?? 0;
    const result = await super.createResource(resource, options, update);
    this.recordWrite(result.resourceType, result.id, previous, historyLength);
    this.identifierIndex.replace(previous, this.getStored(result.resourceType, result.id));
    this.changed();
    return result;
  }

  updateResource(resource, options) {
    // The stock repository creates on update-by-id; Medplum answers 404 for an unknown id.
    if (resource.id && !this.getStored(resource.resourceType, resource.id)) {
      return Promise.reject(new OperationOutcomeError(notFound));
    }
    return super.updateResource(resource, options);
  }

  async deleteResource(resourceType, id, options) {
    const previous = this.getStored(resourceType, id);
    if (!previous) {
      throw new OperationOutcomeError(notFound);
    }
    this.charge(POINTS.write);
    const historyLength = this.history.get(resourceType)?.get(id)?.length ?? 0;
    await super.deleteResource(resourceType, id, options);
    this.recordWrite(resourceType, id, previous, historyLength);
    this.identifierIndex.remove(previous);
    this.changed();
  }

  async expungeResources(resourceType, ids) {
    for (const id of ids) {
      this.identifierIndex.replace(this.getStored(resourceType, id), undefined);
    }
    await super.expungeResources(resourceType, ids);
    this.changed();
  }

  // MemoryRepository overrides conditionalCreate() with a version that writes through a private method,
  // bypassing createResource() (validation, references, index). Use the generic FhirRepository one.
  conditionalCreate(resource, search, options) {
    return FhirRepository.prototype.conditionalCreate.call(this, resource, search, options);
  }

  /** Replaces each conditional reference anywhere in the resource by "Type/<id>" of its single match. */
  async resolveConditionalReferences(resource) {
    const holders = [];
    collectConditionalReferences(resource, holders);
    const resolved = new Map();
    for (const holder of holders) {
      const conditional = holder.reference;
      let target = resolved.get(conditional);
      if (target === undefined) {
        const searchRequest = parseSearchRequest(conditional);
        searchRequest.count = 2;
        const matches = await this.searchResources(searchRequest);
        if (matches.length === 0) {
          throw new OperationOutcomeError(
            badRequest(`Conditional reference '${conditional}' did not match any resources`)
          );
        }
        if (matches.length > 1) {
          throw new OperationOutcomeError(badRequest(`Conditional reference '${conditional}' matched multiple resources`));
        }
        target = `${matches[0].resourceType}/${matches[0].id}`;
        resolved.set(conditional, target);
      }
      holder.reference = target;
    }
  }

  // ---- transactions ------------------------------------------------------------------------------

  recordWrite(resourceType, id, previous, historyLength) {
    if (this.transactionDepth > 0) {
      this.journal.push({ resourceType, id, previous, historyLength });
    }
  }

  // The stock withTransaction() just runs the callback: a failed transaction entry leaves the earlier
  // writes in place. Here every write inside is journaled and undone if the callback throws. Nested
  // calls (a conditional PUT inside a transaction bundle) behave like savepoints. The HTTP layer
  // serializes requests, so no other request interleaves with an open transaction.
  async withTransaction(callback) {
    const mark = this.journal.length;
    this.transactionDepth++;
    try {
      return await callback(this);
    } catch (err) {
      this.rollbackTo(mark);
      throw err;
    } finally {
      this.transactionDepth--;
      if (this.transactionDepth === 0) {
        this.journal.length = 0;
      }
    }
  }

  rollbackTo(mark) {
    if (this.journal.length > mark) {
      this.changed();
    }
    while (this.journal.length > mark) {
      const { resourceType, id, previous, historyLength } = this.journal.pop();
      const current = this.getStored(resourceType, id);
      const byId = this.resources.get(resourceType);
      if (previous) {
        byId.set(id, previous);
      } else {
        byId?.delete(id);
      }
      const versions = this.history.get(resourceType)?.get(id);
      if (versions) {
        versions.length = historyLength;
        if (historyLength === 0) {
          this.history.get(resourceType).delete(id);
        }
      }
      this.identifierIndex.replace(current, previous);
    }
  }

  // ---- persistence ------------------------------------------------------------------------------

  /**
   * Every stored resource id as {resourceType, id, current, versions}: `versions` is its whole history,
   * oldest first (as MemoryRepository keeps it), `current` the index of the current version, -1 if deleted.
   */
  *storedRecords() {
    for (const [resourceType, histories] of this.history) {
      const byId = this.resources.get(resourceType);
      for (const [id, versions] of histories) {
        if (versions.length > 0) {
          yield storedRecord(resourceType, id, versions, byId?.get(id));
        }
      }
    }
    // Current resources without a history entry (not produced by MemoryRepository, kept for safety).
    for (const [resourceType, byId] of this.resources) {
      const histories = this.history.get(resourceType);
      for (const [id, current] of byId) {
        if (!histories?.get(id)?.length) {
          yield storedRecord(resourceType, id, [], current);
        }
      }
    }
  }

  /**
   * Puts a record of storedRecords() back as it was: same ids, versionIds, lastUpdated and history.
   * No validation, no conditional-reference resolution, no quota; the identifier index is updated.
   * Throws an Error describing what is wrong with a malformed record.
   */
  loadStoredRecord(record) {
    const { resourceType, id, current, versions } = record ?? {};
    if (typeof resourceType !== 'string' || typeof id !== 'string' || !Array.isArray(versions) || !versions.length) {
      throw new Error('not a stored resource record (needs resourceType, id and a non-empty versions array)');
    }
    if (!Number.isInteger(current) || current < -1 || current >= versions.length) {
      throw new Error(`${resourceType}/${id}: invalid current version index ${JSON.stringify(current)}`);
    }
    for (const version of versions) {
      if (version?.resourceType !== resourceType || version.id !== id || typeof version.meta?.versionId !== 'string') {
        throw new Error(`${resourceType}/${id}: a version is not a ${resourceType} with that id and a meta.versionId`);
      }
    }
    let histories = this.history.get(resourceType);
    if (!histories) {
      histories = new Map();
      this.history.set(resourceType, histories);
    }
    if (histories.has(id)) {
      throw new Error(`${resourceType}/${id} is stored twice`);
    }
    histories.set(id, versions);
    if (current >= 0) {
      let byId = this.resources.get(resourceType);
      if (!byId) {
        byId = new Map();
        this.resources.set(resourceType, byId);
      }
      byId.set(id, versions[current]);
      this.identifierIndex.add(versions[current]);
    }
  }

  // ---- reads -------------------------------------------------------------------------------------

  async readResource(resourceType, id) {
    this.charge(POINTS.read);
    return super.readResource(resourceType, id);
  }

  // The stock readHistory() reverses the stored history array in place on every call; copy instead.
  async readHistory(resourceType, id, options) {
    await this.readResource(resourceType, id);
    const versions = (this.history.get(resourceType)?.get(id) ?? []).slice().reverse();
    const offset = options?.offset ?? 0;
    const page = versions.slice(offset, options?.limit === undefined ? undefined : offset + options.limit);
    return {
      resourceType: 'Bundle',
      type: 'history',
      total: versions.length,
      ...(page.length ? { entry: page.map((v) => ({ resource: deepClone(v) })) } : undefined),
    };
  }

  async search(searchRequest, options) {
    this.charge(POINTS.search);
    const identifierFilters = (searchRequest.filters ?? []).filter(
      (f) => f.code === 'identifier' && f.operator === Operator.EQUALS
    );
    const bundle =
      identifierFilters.length === 0 || !isIndexedType(searchRequest.resourceType)
        ? await super.search(searchRequest, options)
        : await this.searchByIdentifier(searchRequest, identifierFilters);
    // Each resource returned is work too, priced as a read: a page of 1,000 is not one read's worth.
    this.workPoints += (bundle.entry?.length ?? 0) * POINTS.read;
    return bundle;
  }

  /** A search with at least one `identifier=` filter: candidates from the index, then the other filters. */
  async searchByIdentifier(searchRequest, identifierFilters) {
    const { resourceType } = searchRequest;
    const sortRules = searchRequest.sortRules ?? [];
    const offset = searchRequest.offset ?? 0;
    const end = searchRequest.count === undefined ? undefined : offset + searchRequest.count;
    // The pages of one search share its matches while the store is unchanged, as a database index
    // would let them: looking the whole identifier system up and filtering it again for every page
    // made a census cost its resources times its pages.
    const key = JSON.stringify([resourceType, searchRequest.filters, sortRules]);
    let matches;
    if (this.lastMatches?.key === key && this.lastMatches.version === this.storeVersion) {
      matches = this.lastMatches.matches;
    } else {
      let ids;
      for (const filter of identifierFilters) {
        const found = this.identifierIndex.lookup(resourceType, filter.value);
        ids = ids ? new Set([...ids].filter((id) => found.has(id))) : found;
      }
      const otherFilters = searchRequest.filters.filter((f) => !identifierFilters.includes(f));
      matches = await this.identifierMatches(resourceType, ids, otherFilters, sortRules);
      this.lastMatches = { key, version: this.storeVersion, matches };
    }
    const total = matches.length;
    const page = matches.slice(offset, end);
    const entries = page.map((resource) => ({ search: { mode: 'match' }, resource: this.searchCopy(resource) }));
    if ((searchRequest.include || searchRequest.revInclude) && entries.length) {
      await getExtraEntries(this, searchRequest, entries.map((e) => e.resource), entries);
    }
    return { resourceType: 'Bundle', type: 'searchset', entry: entries.length ? entries : undefined, total };
  }

  /** The stored resources among `ids` that pass the other filters, sorted. */
  async identifierMatches(resourceType, ids, otherFilters, sortRules) {
    let matches = [...ids].map((id) => this.getStored(resourceType, id)).filter(Boolean);

    // A census of what changed (`_lastUpdated=ge…`) pages through many matches: times are compared
    // directly, where the stock matcher would evaluate FHIRPath on every candidate for every page.
    const timeTests = otherFilters.map(lastUpdatedTest);
    matches = matches.filter((r) => timeTests.every((test) => !test || test(r)));
    const plain = otherFilters.filter((f, i) => !timeTests[i] && !f.code.includes('.'));
    const chained = otherFilters.filter((f) => f.code.includes('.'));
    if (plain.length) {
      const rest = { resourceType, filters: plain };
      matches = matches.filter((r) => matchesSearchRequest(r, rest));
    }
    if (chained.length) {
      // Chained filters: let the stock search evaluate them, then intersect (rare for a loader).
      const bundle = await super.search({ resourceType, filters: chained });
      const allowed = new Set((bundle.entry ?? []).map((e) => e.resource.id));
      matches = matches.filter((r) => allowed.has(r.id));
    }
    for (const rule of [...sortRules].reverse()) {
      matches.sort((a, b) => compareBySearchParam(a, b, rule));
    }
    return matches;
  }
}

/** A test for `_lastUpdated=ge<time>` or `lt<time>` (exact for instants to the millisecond, as Medplum
 * stores them), or undefined for any other filter. */
function lastUpdatedTest(filter) {
  const bound = filter.code === '_lastUpdated' ? Date.parse(filter.value) : Number.NaN;
  if (Number.isNaN(bound)) {
    return undefined;
  }
  if (filter.operator === Operator.GREATER_THAN_OR_EQUALS) {
    return (resource) => Date.parse(resource.meta?.lastUpdated) >= bound;
  }
  if (filter.operator === Operator.LESS_THAN) {
    return (resource) => Date.parse(resource.meta?.lastUpdated) < bound;
  }
  return undefined;
}

function storedRecord(resourceType, id, versions, current) {
  if (!current) {
    return { resourceType, id, current: -1, versions };
  }
  // The current version is normally the last history entry (the same object).
  let index = versions.lastIndexOf(current);
  if (index < 0) {
    index = versions.findLastIndex((v) => v.meta?.versionId === current.meta?.versionId);
  }
  if (index < 0) {
    return { resourceType, id, current: versions.length, versions: [...versions, current] };
  }
  return { resourceType, id, current: index, versions };
}

function collectConditionalReferences(value, holders) {
  if (Array.isArray(value)) {
    for (const item of value) {
      collectConditionalReferences(item, holders);
    }
  } else if (value && typeof value === 'object') {
    for (const [key, child] of Object.entries(value)) {
      if (key === 'reference' && typeof child === 'string' && CONDITIONAL_REFERENCE.test(child)) {
        holders.push(value);
      } else if (typeof child === 'object') {
        collectConditionalReferences(child, holders);
      }
    }
  }
}

/** True if `incoming` carries the same content as the stored version (meta.versionId/lastUpdated aside). */
function isUnchanged(stored, incoming) {
  const candidate = JSON.parse(stringify({ ...incoming, meta: { ...stored.meta, ...incoming.meta } }));
  return deepEquals(stored, candidate);
}

function validateOrThrow(resource) {
  // validateResource throws an OperationOutcomeError (400) listing every error issue.
  validateResource(resource);
}

function compareBySearchParam(a, b, rule) {
  const expression = globalSchema.types[a.resourceType]?.searchParams?.[rule.code]?.expression;
  if (!expression) {
    return 0;
  }
  const left = JSON.stringify(evalFhirPath(expression, a));
  const right = JSON.stringify(evalFhirPath(expression, b));
  return left.localeCompare(right) * (rule.descending ? -1 : 1);
}
