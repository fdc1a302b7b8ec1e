"""The connection to NATS: one asyncio loop on a thread of its own, called from the server's and writer's
threads (nats-py is asyncio-only; one bridge call, ``run_coroutine_threadsafe(...).result()`` of a coroutine
that does nothing, took a median 119 us on a 2-vCPU machine, so the queue makes one per batch
or per group), and the two JetStream streams the queue uses, created if missing:

- ``<stream>`` on ``<stream>.data``: the batches. Work-queue retention (a message is deleted once a writer
  acknowledges it, which it does only after storage confirmed the object holding it), ``discard = new``
  with ``max_bytes = queue.max_bytes`` (a full stream refuses publishes: backpressure, never dropped data),
  file storage, ``replicas``, and ``duplicate_window`` for batch ids (``Nats-Msg-Id``). Its description
  says the seq stride of the processes that made it (``seq stride N``: a sequence s is seq ``s * N + k``,
  sharded.py): a process with another refuses to start while the stream holds batches (``check_stride``).
  A stream added to a running deployment also says, in its metadata (``SWITCH_KEY``), when batches with an
  id start going to it (sharded.py, "batch ids across a move").
- ``<stream>_RECORDS`` on ``<stream>.records``: the durability records (plans, durable and failed seqs)
  every process reads from the start. Limits retention, kept for ``RECORDS_AGE`` seconds: a process that
  starts later takes ``durable_through`` from the data stream's first sequence and needs only the newer
  records.

``<stream>.flush`` is a plain NATS subject (not stored): flush requests to every write process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import re
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import nats
import nats.aio.client
from loguru import logger
from nats.aio.client import Client
from nats.js import JetStreamContext, api

from flight_writer.config.settings import QueueSettings, without_password

T = TypeVar("T")
RECORDS_AGE = 24 * 3600.0
STRIDE = re.compile(r"seq stride (\d+)")
STREAM_EXISTS = 10058  # JetStream: a stream of this name exists with another configuration
SWITCH_KEY = "flight_writer_ids_from"  # data stream metadata: when (epoch s) batches with an id go to it
CLAIM = "fw-claim"  # the header of a data message that claims a batch id and holds no batch (ingest.py)
# how far apart two processes' clocks (and the NATS server's) may be for claims to work as sharded.py says:
# the claims go on this much longer than the duplicate window (a first attempt can start as late as the
# moment by its clock, and the re-send's process ends the claims by its own), and writers keep a claim in the
# stream this much longer than its window after the server stored it (feed.py)
CLOCKS = 60.0
# a batch id as its Nats-Msg-Id: nats-py strips a header value and turns its CR and LF into spaces, and
# nats-server reads the value trimmed, so "a", " a" and "a\n" would be one id to JetStream (the second
# batch answered as a duplicate of the first, and never stored). An id of printable ASCII without spaces
# that does not start with "~" (a UUID, a counter, `flight-writer send`'s ids) goes as it is; any other goes
# as ENCODED_ID + the URL-safe base64 of its UTF-8: one header value per id, and back. Ids a process makes
# for batches without one start with PROCESS_ID ("~" + its name, ingest.py), which no producer's id becomes
SAFE_ID = re.compile(r"[!-}][!-~]*")
ENCODED_ID = "~b64~"
PROCESS_ID = "~"
# nats-py reads its socket DEFAULT_BUFFER_SIZE bytes at a time (32 KiB) and its stream reader pauses at twice
# that: a 1.5 MB batch took ~48 reads, each a pass through its parser. At 1 MiB a write process spent 5.0
# CPU-s per GiB instead of 6.8 and the topology went from 160 to 205 MB/s (8,192-row batches, 1 producer, 2
# vCPUs; 256 KiB: 5.25, 4 MiB: 5.17, 16 MiB: 5.7). The module reads it at each call: set once, for every
# connection of this process.
nats.aio.client.DEFAULT_BUFFER_SIZE = 1 << 20
CONNECT_TIMEOUT = 15.0  # at start: then the process exits and its supervisor starts it again


def header_id(client_id: str) -> str:
    """The ``Nats-Msg-Id`` of a batch id (``SAFE_ID``): itself, or encoded where a header would change it."""
    if SAFE_ID.fullmatch(client_id):
        return client_id
    return ENCODED_ID + base64.urlsafe_b64encode(client_id.encode()).decode("ascii")


def id_of_header(value: str) -> str:
    """The batch id a ``Nats-Msg-Id`` made by ``header_id`` stands for (a value no ``header_id`` made, from a
    process of an earlier version, as it is: the id is the batch's label, never a reason to drop it)."""
    if value.startswith(ENCODED_ID):
        with contextlib.suppress(ValueError):  # binascii.Error and UnicodeDecodeError are ValueErrors
            return base64.urlsafe_b64decode(value[len(ENCODED_ID) :].encode("ascii")).decode()
    return value


class Link:
    """A connected NATS client on its own loop thread. ``run(coro)`` runs a coroutine there and returns
    its result to the calling thread; ``spawn(coro)`` starts one without waiting."""

    def __init__(self, settings: QueueSettings, name: str, metadata: dict[str, str] | None = None) -> None:
        """``metadata``: the data stream's, if this link makes it."""
        self.settings = settings
        self._metadata = metadata
        self.made_data_stream = False  # this link made the data stream (it did not exist)
        self.data_subject = f"{settings.stream}.data"
        self.records_subject = f"{settings.stream}.records"
        self.flush_subject = f"{settings.stream}.flush"
        self.records_stream = f"{settings.stream}_RECORDS"
        self.last_error: str | None = None
        self._down_since: float | None = None
        self._closing = False
        self._refused: str | None = None
        #: called on the loop with the seconds the connection was down, after a reconnect
        self.reconnect_listeners: list[Callable[[float], None]] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="flight-writer-nats", daemon=True)
        running = threading.Event()
        self.loop.call_soon(running.set)  # the loop's first step: until then `run` would take it for closed
        self._thread.start()
        try:
            if not running.wait(60):
                raise ConnectionError("the NATS connection's event loop did not start")
            self.nc: Client = self.run(self._connect(name), timeout=60)
            self.js: JetStreamContext = self.nc.jetstream()
            self.run(self._ensure_streams(), timeout=60)
        except BaseException:
            self.close()
            raise

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if not self.loop.is_running():
            coro.close()
            raise ConnectionError("the NATS connection is closed")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def _connect(self, name: str) -> Client:
        s = self.settings
        options: dict[str, Any] = {
            "servers": list(s.url),
            "name": name,
            "max_reconnect_attempts": -1,  # keep trying: NATS coming back is recovery without a restart
            "reconnect_time_wait": 0.5,
            "connect_timeout": 5,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
        }
        if s.user:
            options.update(user=s.user, password=s.password)
        if s.token:
            options["token"] = s.token
        if s.creds_file:
            options["user_credentials"] = s.creds_file
        try:  # reconnects are endless (the option is the same for the first connect), the start is not
            return await asyncio.wait_for(nats.connect(**options), CONNECT_TIMEOUT)
        except TimeoutError:
            urls = ", ".join(without_password(u) for u in s.url)
            raise ConnectionError(
                f"cannot connect to NATS at {urls} within {CONNECT_TIMEOUT:g} s: "
                f"{self._refused or self.last_error or 'no answer'}"
            ) from None

    async def _ensure_streams(self) -> None:
        s = self.settings
        await self._ensure(
            api.StreamConfig(
                name=s.stream,
                subjects=[self.data_subject],
                retention=api.RetentionPolicy.WORK_QUEUE,
                discard=api.DiscardPolicy.NEW,
                max_bytes=s.max_bytes,
                storage=api.StorageType.FILE,
                num_replicas=s.replicas,
                duplicate_window=s.duplicate_window,
                description=self.description,
                metadata=self._metadata,
            )
        )
        await self._ensure(
            api.StreamConfig(
                name=self.records_stream,
                subjects=[self.records_subject],
                retention=api.RetentionPolicy.LIMITS,
                max_age=RECORDS_AGE,
                storage=api.StorageType.FILE,
                num_replicas=s.replicas,
            )
        )

    @property
    def description(self) -> str:
        return f"flight-writer batches, seq stride {self.settings.seq_stride}"

    def declared_stride(self, info: api.StreamInfo) -> int | None:
        found = STRIDE.search(info.config.description or "")
        return int(found.group(1)) if found else None

    def check_stride(self, info: api.StreamInfo, legacy: Callable[[], int]) -> bool:
        """Refuse a data stream holding batches whose seqs were given under another stride (another
        queue.streams or stream_slots): its seqs would name other batches here. A stream made before streams
        said their stride had ``legacy()`` (the number of the deployment's streams: that version's stride).
        True if the description should say this process's stride (``stamp``): missing, or an empty stream's."""
        declared = self.declared_stride(info)
        stride = self.settings.seq_stride
        if declared == stride:
            return False
        if info.state.messages and self._holds_batches(info):
            held = declared if declared is not None else legacy()
            if held != stride:
                raise ValueError(
                    f"NATS stream {info.config.name} holds batches whose seqs have stride {held} "
                    f"(queue.streams / stream_slots of the processes that put them), this process has {stride}: "
                    "every process must have the same; change them only with the queue drained"
                )
        if declared is not None:  # a drained stream taken over: its seqs from now on mean this stride's
            logger.warning(
                "NATS stream {} held no batch: its seq stride is now {} (it was {}; queue.streams / stream_slots "
                "must be the same in every process)",
                info.config.name,
                stride,
                declared,
            )
        return True

    def _holds_batches(self, info: api.StreamInfo) -> bool:
        """Whether a data stream holds a batch, not only claims (writers leave those for their window after
        a stream was added, durable: sharded.py); read message by message, at most 10,000."""
        subject, seq = f"{info.config.name}.data", info.state.first_seq
        for _ in range(10_000):
            try:
                raw = self.run(self.js.get_msg(info.config.name, seq, subject=subject, next=True), 30)
            except nats.js.errors.NotFoundError:
                return False
            if CLAIM not in (raw.headers or {}):
                return True
            seq = raw.seq + 1
        return True

    def stamp(self, info: api.StreamInfo) -> None:
        """Say this process's stride in the stream's description (needs the STREAM.UPDATE permission)."""
        try:
            self.run(self.js.update_stream(dataclasses.replace(info.config, description=self.description)), 30)
        except Exception as exc:  # e.g. not permitted: everything works, only the check is lost
            logger.warning(
                "could not say the seq stride in the description of NATS stream {} ({}): a process with "
                "another queue.streams / stream_slots will not be refused",
                info.config.name,
                exc,
            )

    async def count_streams(self, base: str) -> int:
        """How many of ``base``, ``base-1``, ``base-2``, ... exist (``base`` itself taken as existing)."""
        k = 1
        while True:
            try:
                await self.js.stream_info(f"{base}-{k}")
            except nats.js.errors.NotFoundError:
                return k
            k += 1

    async def _ensure(self, config: api.StreamConfig) -> None:
        try:
            await self.js.stream_info(config.name)
        except nats.js.errors.NotFoundError:
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != STREAM_EXISTS:
                    raise
                return  # another process made it a moment ago (with its own metadata)
            logger.info("created JetStream stream {} ({})", config.name, ", ".join(config.subjects or []))
            if config.name == self.settings.stream:
                self.made_data_stream = True

    async def _on_error(self, exc: Exception) -> None:
        self.last_error = f"NATS: {type(exc).__name__}: {exc}"
        if "authoriz" in str(exc).lower() or "authentic" in str(exc).lower():
            self._refused = self.last_error  # what a connection reset after it would hide

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        self.last_error = "NATS: disconnected; reconnecting"
        if self._down_since is None:
            self._down_since = time.monotonic()
        logger.warning("NATS disconnected; reconnecting")

    async def _on_reconnected(self) -> None:
        self.last_error = None
        down = time.monotonic() - self._down_since if self._down_since is not None else 0.0
        self._down_since = None
        for listener in self.reconnect_listeners:
            listener(down)
        logger.info("NATS reconnected to {}", without_password(str(self.nc.connected_url.geturl())))

    def close(self) -> None:
        self._closing = True
        if hasattr(self, "nc") and not self.nc.is_closed:
            try:
                self.run(self.nc.close(), timeout=10)
            except Exception as exc:  # closing: nothing left to save
                logger.warning("NATS close: {}", exc)
        if self.loop.is_running():
            with contextlib.suppress(Exception):
                self.run(_cancel_others(), timeout=10)  # the keepalive and subscriptions' tasks
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        if not self.loop.is_running() and not self.loop.is_closed():
            self.loop.close()


async def _cancel_others() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
