"""What the queue implementations and the writer count with: items, rows and bytes per dataset, bounded in
names, and the window of recent client ids (duplicate detection). Helpers, not part of the seam."""

from __future__ import annotations

from collections import OrderedDict

MAX_DATASETS = 10_000  # datasets counted by name (status, metrics); beyond, together: names are the clients'
OTHER = "(other)"  # what those are counted as: not a valid dataset name, so it cannot collide with one


class Counts:
    """Items (batches or files), rows and bytes, in all (``total``) and per dataset, added under the owner's
    lock: the first ``MAX_DATASETS`` dataset names each on their own, later ones together as ``OTHER``."""

    __slots__ = ("_by_dataset", "total")

    def __init__(self) -> None:
        self.total = [0, 0, 0]
        self._by_dataset: dict[str, list[int]] = {}

    def add(self, dataset: str, rows: int, nbytes: int) -> None:
        total = self.total
        total[0] += 1
        total[1] += rows
        total[2] += nbytes
        counts = self._by_dataset.get(dataset)
        if counts is None:
            table = self._by_dataset
            counts = table.setdefault(dataset if len(table) < MAX_DATASETS else OTHER, [0, 0, 0])
        counts[0] += 1
        counts[1] += rows
        counts[2] += nbytes

    def by_dataset(self) -> dict[str, tuple[int, int, int]]:
        return {name: (c[0], c[1], c[2]) for name, c in self._by_dataset.items()}


class IdWindow:
    """The last ``size`` client ids with the seq each was accepted as (for duplicate detection)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._ids: OrderedDict[str, int] = OrderedDict()

    def get(self, client_id: str) -> int | None:
        return self._ids.get(client_id)

    def add(self, client_id: str, seq: int) -> None:
        self._ids[client_id] = seq
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)

    def items(self) -> list[tuple[str, int]]:
        return list(self._ids.items())

    def __len__(self) -> int:
        return len(self._ids)
