"""The mapping register: each source field, its FHIR path, rule and disposition, probed from the mapping code."""
