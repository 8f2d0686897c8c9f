"""Phased adoption beyond the backfill: the sync, dual-write comparison, read readiness, the legacy
archive and chart review."""
