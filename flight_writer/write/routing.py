"""Where an entry of the feed goes, as one answer: its :class:`Route` (the dataset's rule, the shape --
stored schema and types -- of its file, how its partition is found). Routes are cached per dataset and
stream schema: a glob match or a schema walk per batch would cost the writer loop; what is left per entry
is one dict lookup and the partition key (an integer division in the common case)."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from loguru import logger

from flight_writer.config import DatasetRule, DatasetSettings
from flight_writer.lake.layout import Shape, partition_path
from flight_writer.queue import Entry

MAX_ROUTES = 100_000  # cached (dataset, schema) routes; beyond, the cache starts over


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """Where the batches of one dataset with one stream schema go."""

    rule: DatasetRule
    shape: Shape
    by_hour: bool  # partitioned by the hour received only: the key is the hour, folders made once per buffer

    def partition(self, e: Entry) -> int | str:
        """The buffer's partition key: the hour received (an int, the common case, without a path per
        batch), else the folders."""
        if self.by_hour:
            return int(e.received_at // 3600)
        return _folders_of_split(self.rule, e)

    def folders(self, e: Entry, partition: int | str) -> str:
        """The folders of the file a new buffer with this ``partition`` key starts."""
        return partition if isinstance(partition, str) else partition_path(self.rule, e.batch, e.received_at)


class Routes:
    def __init__(self, datasets: DatasetSettings) -> None:
        self._datasets = datasets
        self._routes: dict[tuple[str, bytes], Route] = {}
        self._rules: dict[str, DatasetRule] = {}
        self._shapes: dict[tuple[bytes, DatasetRule], Shape] = {}

    def of(self, e: Entry) -> Route:
        """The route of an entry: one question per entry."""
        route = self._routes.get((e.dataset, e.schema_key))
        if route is None:
            route = self._made(e)
        return route

    def _made(self, e: Entry) -> Route:
        if len(self._routes) >= MAX_ROUTES:
            self._routes.clear()
            self._rules.clear()
            self._shapes.clear()
        rule = self._rules.get(e.dataset)
        if rule is None:
            rule = self._rules[e.dataset] = self._datasets.rule_for(e.dataset)
        shape = self._shapes.get((e.schema_key, rule))  # datasets of one rule share shapes
        if shape is None:
            shape = self._shapes[(e.schema_key, rule)] = Shape.of(e.batch.schema, rule)
        route = Route(rule, shape, rule.partition == "received" and not rule.fields)
        self._routes[(e.dataset, e.schema_key)] = route
        return route


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
