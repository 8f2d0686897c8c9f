// An exact-match index for token searches on `identifier`.
//
// The stock MemoryRepository answers every search by scanning all stored resources of the type and
// evaluating FHIRPath on each one, so a conditional PUT gets slower with every resource stored (about
// 140 writes/s on an empty store, about 6 at 50,000). A real Medplum server looks identifiers up in an
// indexed token table. This module keeps, per resource type, Maps from "system|value", "value" and
// "system" to the ids holding them, updated on every create, update, delete and rollback.
//
// Matching follows the real server, not the stock matcher (which lower-cases both sides and ignores
// FHIR search escaping): values compare exactly, `\,` `\|` `\$` `\\` are escapes, an unescaped `,`
// separates alternatives, and a value holding `|` is only found with its system in front.
import { evalFhirPath, globalSchema } from '@medplum/core';

const SEP = '\u0000';

/** Per resource type: how to read the Identifier values that the `identifier` search parameter covers. */
const extractorCache = new Map();

function getIdentifierExtractor(resourceType) {
  let extractor = extractorCache.get(resourceType);
  if (extractor !== undefined) {
    return extractor;
  }
  const expression = globalSchema.types[resourceType]?.searchParams?.identifier?.expression;
  if (!expression) {
    extractor = null;
  } else {
    // Shared search parameters use a union over many types ("A.identifier | B.identifier | ...");
    // keep only this type's branches, and read the common `Type.identifier` case directly.
    const parts = expression
      .split('|')
      .map((p) => p.trim())
      .filter((p) => p.startsWith(resourceType + '.'));
    if (parts.length === 1 && parts[0] === resourceType + '.identifier') {
      // Most types hold an array; a few (Bundle, Composition, QuestionnaireResponse...) a single Identifier.
      extractor = (resource) => [resource.identifier].flat().filter((v) => v && typeof v === 'object');
    } else if (parts.length > 0) {
      const expr = parts.join(' | ');
      extractor = (resource) => evalFhirPath(expr, resource).filter((v) => v && typeof v === 'object');
    } else {
      extractor = null;
    }
  }
  extractorCache.set(resourceType, extractor);
  return extractor;
}

/** True if `identifier` searches on this resource type can be answered by the index. */
export function isIndexedType(resourceType) {
  return Boolean(getIdentifierExtractor(resourceType));
}

function addTo(map, key, id) {
  let ids = map.get(key);
  if (!ids) {
    ids = new Set();
    map.set(key, ids);
  }
  ids.add(id);
}

function removeFrom(map, key, id) {
  const ids = map.get(key);
  if (ids) {
    ids.delete(id);
    if (ids.size === 0) {
      map.delete(key);
    }
  }
}

function keysOf(resource) {
  const extractor = getIdentifierExtractor(resource.resourceType);
  if (!extractor) {
    return [];
  }
  const keys = [];
  for (const identifier of extractor(resource)) {
    keys.push({ system: identifier.system, value: identifier.value });
  }
  return keys;
}

export class IdentifierIndex {
  constructor() {
    /** resourceType -> { bySystemValue, byValue, bySystem }: Map<string, Set<id>> each */
    this.types = new Map();
  }

  tables(resourceType) {
    let t = this.types.get(resourceType);
    if (!t) {
      t = { bySystemValue: new Map(), byValue: new Map(), bySystem: new Map() };
      this.types.set(resourceType, t);
    }
    return t;
  }

  add(resource) {
    const t = this.tables(resource.resourceType);
    for (const { system, value } of keysOf(resource)) {
      if (value !== undefined) {
        addTo(t.bySystemValue, (system ?? '') + SEP + value, resource.id);
        addTo(t.byValue, value, resource.id);
      }
      if (system !== undefined) {
        addTo(t.bySystem, system, resource.id);
      }
    }
  }

  remove(resource) {
    const t = this.tables(resource.resourceType);
    for (const { system, value } of keysOf(resource)) {
      if (value !== undefined) {
        removeFrom(t.bySystemValue, (system ?? '') + SEP + value, resource.id);
        removeFrom(t.byValue, value, resource.id);
      }
      if (system !== undefined) {
        removeFrom(t.bySystem, system, resource.id);
      }
    }
  }

  /** Replaces the index entries of `previous` (may be undefined) by those of `next` (may be undefined). */
  replace(previous, next) {
    if (previous) {
      this.remove(previous);
    }
    if (next) {
      this.add(next);
    }
  }

  /**
   * Ids of `resourceType` resources matching an `identifier=` search value (raw, still escaped).
   * @returns {Set<string>}
   */
  lookup(resourceType, rawValue) {
    const t = this.tables(resourceType);
    const result = new Set();
    for (const alternative of parseTokenSearchValue(rawValue)) {
      let ids;
      if (alternative.system === undefined) {
        // [code] without a system: a value holding "|" is never found this way (as on the real server)
        ids = alternative.value.includes('|') ? undefined : t.byValue.get(alternative.value);
      } else if (alternative.value === '') {
        ids = alternative.system === '' ? undefined : t.bySystem.get(alternative.system); // [system]|
      } else {
        ids = t.bySystemValue.get(alternative.system + SEP + alternative.value); // [system]|[code], |[code]
      }
      for (const id of ids ?? []) {
        result.add(id);
      }
    }
    return result;
  }
}

/**
 * Parses a token search value with FHIR escaping into alternatives {system?, value}.
 * `SYS|A\,B` -> [{system: 'SYS', value: 'A,B'}]; `SYS|A,B` -> [{SYS, A}, {undefined, B}];
 * `SYS|Q\|101` -> [{SYS, 'Q|101'}]; `|X` -> [{system: '', value: 'X'}].
 */
export function parseTokenSearchValue(raw) {
  const alternatives = [];
  let current = '';
  let system; // set once an unescaped "|" has been seen in the current alternative
  let escaped = false;
  const finish = () => {
    alternatives.push(system === undefined ? { system: undefined, value: current } : { system, value: current });
    current = '';
    system = undefined;
  };
  for (const c of raw) {
    if (escaped) {
      current += c;
      escaped = false;
    } else if (c === '\\') {
      escaped = true;
    } else if (c === ',') {
      finish();
    } else if (c === '|' && system === undefined) {
      system = current;
      current = '';
    } else {
      current += c;
    }
  }
  if (escaped) {
    current += '\\';
  }
  finish();
  return alternatives;
}
