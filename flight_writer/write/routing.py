"""Where an entry of the feed goes: its dataset's rule, the partition of its buffer, the folders of its file,
and the shape (stored schema and types) of that file. Rules and shapes are cached: a glob match or a
schema walk per batch would cost the writer loop."""

from __future__ import annotations

import pyarrow as pa
from loguru import logger

from flight_writer.config import DatasetRule, DatasetSettings
from flight_writer.lake.layout import Shape, partition_path
from flight_writer.queue import Entry


class Routes:
    def __init__(self, datasets: DatasetSettings) -> None:
        self._datasets = datasets
        self._rules: dict[str, DatasetRule] = {}
        self._shapes: dict[tuple[bytes, DatasetRule], Shape] = {}

    def rule(self, dataset: str) -> DatasetRule:
        rule = self._rules.get(dataset)
        if rule is None:
            if len(self._rules) > 100_000:
                self._rules.clear()
            rule = self._rules[dataset] = self._datasets.rule_for(dataset)
        return rule

    @staticmethod
    def partition(rule: DatasetRule, e: Entry) -> int | str:
        """The buffer's partition key: the hour received (an int, the common case, without a path per
        batch), else the folders."""
        if rule.partition == "received" and not rule.fields:
            return int(e.received_at // 3600)
        return Routes._folders_of_split(rule, e)

    @staticmethod
    def folders(rule: DatasetRule, e: Entry, partition: int | str) -> str:
        return partition if isinstance(partition, str) else partition_path(rule, e.batch, e.received_at)

    def shape(self, e: Entry, rule: DatasetRule | None = None) -> Shape:
        rule = rule or self.rule(e.dataset)
        shape = self._shapes.get((e.schema_key, rule))
        if shape is None:
            if len(self._shapes) > 10_000:
                self._shapes.clear()
            shape = self._shapes[(e.schema_key, rule)] = Shape.of(e.batch.schema, rule)
        return shape

    @staticmethod
    def _folders_of_split(rule: DatasetRule, e: Entry) -> str:
        """The folders of a batch the server split by this rule. A batch queued before the rule changed
        (a WAL recovered after a restart) may lack its columns: it goes to the received-time folders."""
        try:
            return partition_path(rule, e.batch, e.received_at)
        except (KeyError, ValueError, OSError, OverflowError, pa.ArrowException) as exc:
            logger.warning(
                "dataset={} seq={}: no partition by {} ({}: {}); stored by the time received",
                e.dataset,
                e.seq,
                rule.time_column or ", ".join(rule.fields),
                type(exc).__name__,
                exc,
            )
            return partition_path(DatasetRule(granularity=rule.granularity), e.batch, e.received_at)
