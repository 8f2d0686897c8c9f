"""The seed EHR profile's own tests: its mappings, its register and its sample data."""
