"""``flight-writer tables``: maintenance of the lake tables, run on storage and the catalog directly (no server):

- ``tables maintain``: expire old Iceberg snapshots (and the manifests only they used), checkpoint a Delta
  log and delete its expired entries; counts the metadata files before and after;
- ``tables compact``: rewrite each partition's small files into fewer, larger ones, one replace commit per
  new file (lake/tables/compact.py: the intent written first, so a crash at any step is settled later);
- ``tables remove-orphans``: delete data files no version of the table needs, older than ``--older-than``.

Each runs on every table dataset storage holds (``--dataset``, repeatable, to name some), with the settings
file's storage, ``[tables]`` and dataset rules, and prints one line per dataset (``--json``: one JSON object).
A dataset that fails is told in one line and the others go on; the exit status is 1 then. The command is
registered by cli.py beside the console commands, and reaches no server (no connection options)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from flight_writer.config import ConfigError, Settings, load_settings
from flight_writer.lake.datasets import Datasets
from flight_writer.lake.storage import Storage, StorageError, first_line
from flight_writer.lake.tables import Table, TableError, Tables, make_tables
from flight_writer.lake.tables.compact import SHARED_AGE, TARGET_BYTES, compact, describe, recover
from flight_writer.lake.tables.maintain import ORPHAN_AGE, maintain, remove_orphans

Action = Callable[[argparse.Namespace, Settings, Storage, Table], dict[str, Any]]


def add_command(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "tables",
        help="maintain, compact or clean the lake tables (on storage and the catalog, no server needed)",
        description="Maintenance of the Iceberg and Delta tables of the datasets whose rule says table = "
        "iceberg or delta, run on the storage and catalog of the settings file (a server may run meanwhile).",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    keep = _action(actions, "maintain", "expire old snapshots, checkpoint, delete unneeded metadata", _maintain)
    keep.add_argument(
        "--keep", type=int, help="Iceberg snapshots to keep (default: the settings' tables.keep_snapshots)"
    )
    squash = _action(actions, "compact", "rewrite each partition's small files into fewer, larger ones", _compact)
    squash.add_argument(
        "--target-bytes",
        type=int,
        default=TARGET_BYTES,
        help=f"files below this size are compacted, into files of about this size (default {TARGET_BYTES})",
    )
    squash.add_argument("--dry-run", action="store_true", help="say what would be compacted, change nothing")
    clean = _action(actions, "remove-orphans", "delete data files no version of the table needs", _remove_orphans)
    clean.add_argument(
        "--older-than",
        type=float,
        default=ORPHAN_AGE,
        help=f"only files last modified more than this many seconds ago (default {ORPHAN_AGE:.0f}; "
        "younger files may wait for their commit)",
    )
    clean.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")


def _action(actions: argparse._SubParsersAction, name: str, summary: str, action: Action) -> argparse.ArgumentParser:
    """One of the three, with the options they share; its ``run`` does ``action`` on each dataset."""
    parser = actions.add_parser(name, help=summary, description=summary)
    parser.add_argument("--config", help="the settings file the server runs with (storage, tables, datasets)")
    parser.add_argument(
        "--dataset",
        action="append",
        help="a dataset to work on (repeatable; default: every dataset storage holds whose rule has a table)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object: the counts per dataset")
    parser.set_defaults(run=_runner(action))
    return parser


def _maintain(args: argparse.Namespace, settings: Settings, storage: Storage, table: Table) -> dict[str, Any]:
    keep = settings.tables.keep_snapshots if args.keep is None else args.keep
    return maintain(storage, table, keep)


def _compact(args: argparse.Namespace, settings: Settings, storage: Storage, table: Table) -> dict[str, Any]:
    done: dict[str, Any] = {}
    if not args.dry_run:  # first what a compaction that died over an hour ago left
        recovered = recover(storage, table, SHARED_AGE)
        if recovered["intents"]:
            done.update({f"recovered_{k}": v for k, v in recovered.items()})
    done.update(compact(storage, table, settings.writer, args.target_bytes, args.dry_run))
    return done


def _remove_orphans(args: argparse.Namespace, settings: Settings, storage: Storage, table: Table) -> dict[str, Any]:
    return remove_orphans(storage, table, args.older_than, args.dry_run)


def _runner(action: Action) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return _run(args, action)
        except KeyboardInterrupt:
            print("flight-writer: interrupted", file=sys.stderr)
            return 130

    return run


def _run(args: argparse.Namespace, action: Action) -> int:
    try:
        settings = load_settings(args.config)
        storage = Storage.from_settings(settings.storage)
        tables = make_tables(settings.tables, settings.datasets, settings.storage)
    except (ConfigError, StorageError, TableError) as exc:
        print(f"flight-writer: {exc}", file=sys.stderr)
        return 2
    if not tables:
        print("flight-writer: no dataset rule says table = iceberg or delta: no tables to work on", file=sys.stderr)
        return 0
    failed = False
    results: dict[str, Any] = {}
    try:
        for dataset in args.dataset or _table_datasets(settings, storage):
            fmt = settings.datasets.rule_for(dataset).table
            try:
                if fmt not in tables:
                    raise TableError(f"its rule says table = {fmt!r}")
                table = tables[fmt].open(dataset, None)
                if table is None:
                    results[dataset] = None
                    if not args.json:
                        print(f"{dataset} ({fmt}): no table yet")
                    continue
                done = action(args, settings, storage, table)
            except Exception as exc:
                failed = True
                print(f"flight-writer: tables {args.action} {dataset}: {first_line(exc)}", file=sys.stderr)
                continue
            results[dataset] = {"format": fmt, **done}
            if not args.json:
                print(f"{dataset} ({fmt}): {describe(done)}")
    finally:
        _close(tables)
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


def _table_datasets(settings: Settings, storage: Storage) -> list[str]:
    return [d for d in Datasets(storage).names() if settings.datasets.rule_for(d).table != "none"]


def _close(tables: dict[str, Tables]) -> None:
    for made in tables.values():
        made.close()
