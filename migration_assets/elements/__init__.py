"""The element contract (base.py), the profile contract (profile.py) and the FHIR building blocks every
profile shares. Nothing here knows a legacy schema; the profile in use is picked in migration_assets.active."""
