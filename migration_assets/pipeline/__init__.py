"""The migration of one data element: partitions, frames, the load, and the Dagster assets, checks and
resources around them."""
