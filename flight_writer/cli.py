"""The ``flight-writer`` command: ``serve`` runs the service until SIGTERM/SIGINT (SIGHUP reloads its
settings); ``config`` prints the default settings file; ``check`` asks a running server for its status and
exits 0 if it answers (1 otherwise); ``hash-secret`` hashes a password and ``new-token`` makes a machine token
for ``auth.principals_file``. The commands for people at a terminal (``status``, ``top``, ``send``) are in
console/, and so is ``tables`` (maintenance of the lake tables, run on storage without a server:
console/tables.py). A reader that closes the pipe early (``| head``) ends a command quietly."""

from __future__ import annotations

import argparse
import ctypes
import getpass
import json
import os
import signal
import sys
import threading
import time
from importlib import resources

from loguru import logger

import flight_writer.allocator  # noqa: F401  (first: it must run before pyarrow is imported)
from flight_writer import __version__, console
from flight_writer.config import ConfigError, load_settings
from flight_writer.console import tables as table_commands
from flight_writer.console.common import connection_arguments
from flight_writer.lake.storage import StorageError
from flight_writer.log import configure_logging
from flight_writer.queue import queue_class
from flight_writer.service import Service
from flight_writer.signals import SignalInbox, StopRequests

TRIM_EVERY = 0.1  # seconds between malloc_trim calls
TRIM_EVERY_NATS = 1.0  # the same in the processes of a NATS queue (see _tune_malloc)


DESCRIPTION = """\
An Apache Arrow Flight ingestion server: producers stream Arrow record batches to it (do_put, or ADBC
Flight SQL bulk ingestion); it writes them as Parquet files to local disk or object storage (S3, Azure
Blob, GCS, ...) and tells clients when their data is durable."""

EPILOG = """\
start here:
  flight-writer config > settings.toml      the default settings, each explained: edit what you need
  flight-writer serve --config settings.toml
  flight-writer send demo/spans spans.parquet
  flight-writer top                         watch it work

status, top, send and check reach the server at --location (default $FLIGHT_WRITER_URL, else
grpc://127.0.0.1:8815). flight-writer COMMAND --help says more about each command."""

PIPE_CLOSED = 1  # the exit status when the reader closed the pipe: Python's documented choice, and rich's


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, where a closed pipe is caught, rather than at exit
        return code
    except BrokenPipeError:
        _stdout_to_devnull()
        return PIPE_CLOSED


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="flight-writer",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"flight-writer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the server (Flight on server.location; stops on SIGTERM or Ctrl-C)")
    serve.add_argument(
        "--config", help="a TOML settings file (`flight-writer config` prints the defaults to start from)"
    )
    serve.add_argument(
        "--role",
        choices=("all", "ingest", "write"),
        default="all",
        help="all: take batches and write them (default); ingest or write: one side, with queue.type = nats",
    )
    sub.add_parser(
        "config",
        help="print the default settings file, the one to start from: every setting with its default, explained",
        description="Print the default settings file (TOML): every setting with its default and what it does. "
        "It is the file to start from: flight-writer config > settings.toml, change what you need, then "
        "flight-writer serve --config settings.toml. Settings left out keep their defaults, and any setting "
        "can also come from an environment variable FLIGHT_WRITER_<SECTION>__<KEY>.",
    )
    check = sub.add_parser("check", help="exit 0 if a server answers the status action")
    connection_arguments(check)  # --location, --tls-ca, credentials as the console commands take them
    sub.add_parser(
        "hash-secret", help="read a human password from stdin, print its scrypt hash for auth.principals_file"
    )
    sub.add_parser(
        "new-token", help="make a machine token: prints the token (give it to the client) and its hash (the file)"
    )
    console.add_commands(sub)  # status, top, send: commands for people at a terminal
    table_commands.add_command(sub)  # tables maintain | compact | remove-orphans: on storage, no server
    args = parser.parse_args(argv)
    if hasattr(args, "run"):
        return args.run(args)
    if args.command == "config":
        return _print_config()
    if args.command == "hash-secret":
        return _hash_secret()
    if args.command == "new-token":
        return _new_token()
    if args.command == "check":
        return _check(args)
    return _serve(args.config, args.role)


def _stdout_to_devnull() -> None:
    """The reader is gone: what is still buffered for stdout goes nowhere, so that the interpreter's own
    flush at exit does not fail again (and print 'Exception ignored ... BrokenPipeError')."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # a stdout without a descriptor (captured, replaced): nothing to flush at exit
        pass


def default_settings_text() -> str:
    """configs/settings.toml as the package ships it (flight_writer/settings.toml, a copy kept equal by a test)."""
    return resources.files("flight_writer").joinpath("settings.toml").read_text(encoding="utf-8")


def _print_config() -> int:
    sys.stdout.write(default_settings_text())
    return 0


def _serve(config: str | None, role: str = "all") -> int:
    try:
        settings = load_settings(config)
        if role != "all" and not queue_class(settings.queue.type).shared:
            shared = settings.queue.type
            raise ConfigError(f"--role {role} needs queue.type = nats (a queue processes share), not {shared}")
    except ConfigError as exc:
        print(f"flight-writer: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log)
    _tune_malloc(settings.writer.threads, TRIM_EVERY_NATS if settings.queue.type == "nats" else TRIM_EVERY)
    service = Service(settings, role=role)
    inbox = SignalInbox((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
    stops = StopRequests(settings.server.same_stop_window)
    # the start runs beside the main thread, which handles signals meanwhile: a WAL's recovery or a NATS
    # connect may take long; a stop signal then stops once started, a later one exits at once
    failed: list[BaseException] = []
    logger.debug("starting: queue {}, storage {}, role {}", settings.queue.type, settings.storage.type, role)
    starting = threading.Thread(target=_start, args=(service, failed), name="flight-writer-start")
    starting.start()
    reload_asked = False
    while starting.is_alive():
        for signum in inbox.wait(0.2):
            if signum == signal.SIGHUP:
                reload_asked = True  # applied once started
            else:
                stops.note(signum)
    if failed:
        inbox.close()
        exc = failed[0]
        shown = str(exc) if isinstance(exc, StorageError | OSError) else f"{type(exc).__name__}: {exc}"
        print(f"flight-writer: cannot start: {shown}", file=sys.stderr)  # one line, not a traceback
        return 2
    if reload_asked and not stops.asked:
        _reload(service, config)
    while not stops.asked:
        for signum in inbox.wait(0.5):
            if signum == signal.SIGHUP:
                if not stops.asked:
                    _reload(service, config)
            else:
                stops.note(signum)
    # the stop runs beside the main thread, which stays in Python so that a later signal is handled (a
    # blocking server.shutdown() on the main thread deferred every handler until open streams closed)
    stopping = threading.Thread(target=service.stop, name="flight-writer-stop")
    stopping.start()
    while stopping.is_alive():
        for signum in inbox.wait(0.2):
            if signum != signal.SIGHUP:
                stops.note(signum)
    inbox.close()
    if service.calls_open:  # streams still open at server.shutdown_timeout: everything answered is written
        logger.info("exiting: ending the streams still open")
        logger.complete()
        sys.stderr.flush()
        os._exit(0)  # interpreter shutdown would wait for the calls pyarrow cannot end
    return 0


def _start(service: Service, failed: list[BaseException]) -> None:
    try:
        service.start()
    except Exception as exc:  # e.g. the port is taken, storage refuses: said by the main thread
        failed.append(exc)


def _reload(service: Service, config: str | None) -> None:
    """SIGHUP: read the settings file and environment again; apply what can change live (Service.reload)."""
    from flight_writer.ingest.auth import AuthError

    try:
        live, restart = service.reload(load_settings(config))
    except (ConfigError, AuthError) as exc:
        logger.error("SIGHUP: nothing changed: {}", exc)
        return
    except Exception as exc:  # e.g. a file that is not UTF-8: a reload must never end the server
        logger.error("SIGHUP: nothing changed: {}: {}", type(exc).__name__, exc)
        return
    for name in restart:
        logger.warning("SIGHUP: {} changed but needs a restart: kept as it was", name)
    principals = service.settings.auth.principals_file
    # said before a new log level applies: a reload that raises the level still leaves its line
    logger.info(
        "SIGHUP: settings reloaded{}; changed now: {}",
        f", principals read again from {principals}" if principals else "",
        ", ".join(live) or "nothing",
    )
    if any(name.startswith("log.") for name in live):
        configure_logging(service.settings.log)


def _tune_malloc(threads: int, trim_every: float) -> None:
    """Keep glibc from holding on to memory it no longer uses (RSS never shrinks otherwise), without
    making large frees and copies slow:

    - M_ARENA_MAX ``writer.threads + 2``: every thread that allocates may otherwise get an arena of its own
      (up to 8 per core), each keeping its free memory apart; with fewer arenas than encoding threads, they
      wait for each other's arena locks.
    - malloc_trim every ``trim_every`` s: gRPC receives in pieces; freed in the middle of the heap they
      stayed resident (the heap was 170 MiB at one peak, 36 MiB at another). Trimming runs without the GIL.
      Every 0.1 s, except with a NATS queue: there every byte is copied through fresh buffers (the
      client's reads, the message, the IPC payload) and the pages trimmed were faulted in again at once.
      In the NATS topology (8,192-row batches, 1 producer, 2 vCPUs, 4 interleaved runs) 1 s instead of
      0.1 s took the processes from 9.5-10.5 to 8.8-9.0 CPU-s per GiB (the write process's system time
      1.5 -> 0.9-1.1) and 184-203 to 212-218 MB/s; one process on the memory queue showed no difference
      beyond noise, and the memory benchmark's peak RSS was 364 MiB at 0.1 s, 392 at 1 s (medians of 3).
    - M_MMAP_THRESHOLD is left to glibc. Pinned at 1 MiB (as before), every gRPC message and encoded file
      was its own mapping: freeing 128 MiB of received 8,192-row batches took 4-7 ms and copying a 26 MB
      file into ``bytes`` 15-18 ms, both holding the GIL, against 0.6 ms and 3.5-4.4 ms unpinned.

    Each mallopt is skipped if its MALLOC_*_ environment variable is set. Peak RSS: see BENCHMARKS.md."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc
    if "MALLOC_ARENA_MAX" not in os.environ and libc.mallopt(-8, threads + 2) != 1:  # M_ARENA_MAX, malloc.h
        logger.warning("mallopt(M_ARENA_MAX) failed: memory freed after peaks may stay with the process")

    def trim() -> None:
        while True:
            time.sleep(trim_every)
            libc.malloc_trim(0)

    threading.Thread(target=trim, name="flight-writer-malloc-trim", daemon=True).start()


def _hash_secret() -> int:
    from flight_writer.ingest.auth import hash_secret

    secret = getpass.getpass("secret: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if len(secret) < 16:
        print("flight-writer: a secret needs 16 characters or more", file=sys.stderr)
        return 2
    print(hash_secret(secret))
    return 0


def _new_token() -> int:
    from flight_writer.ingest.auth import new_token

    token, stored = new_token()
    print(f"token: {token}")
    print(f'hash:  "{stored}"  # add it to the principal\'s secret list in auth.principals_file, then SIGHUP')
    return 0


def _check(args: argparse.Namespace) -> int:
    """The status action with the console's credentials ($FLIGHT_WRITER_TOKEN, or a Basic login): with
    auth on, a check without them would always fail."""
    from flight_writer.console.common import CommandError, Connection, one_line

    try:
        connection = Connection(args)
        client = connection.open()
        print(json.dumps(connection.action(client, "status", timeout=5), indent=2))
        return 0
    except CommandError as exc:
        print(f"flight-writer: {exc}", file=sys.stderr)
    except Exception as exc:
        print(f"flight-writer: no answer from {args.location}: {one_line(exc)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
