"""The profiles shipped with the platform, one package each. The platform never imports them by name:
migration_assets.elements.profile.load_profile finds the one MIGRATION_PROFILE picks."""
