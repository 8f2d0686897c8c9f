"""One partition per data element, in load order (declared by each element's `requires`)."""

from dagster import StaticPartitionsDefinition

from migration_assets.active import LOAD_ORDER

DATA_ELEMENTS = StaticPartitionsDefinition(list(LOAD_ORDER))
PARTITION_TAG = "dagster/partition"  # the tag naming a partitioned run's partition (the launchpad sets it)
