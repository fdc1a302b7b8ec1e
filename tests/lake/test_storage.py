"""Storage backends: one contract run against fs, memory, S3 (moto), Azure Blob (Azurite) and GCS
(gcp-storage-emulator); then, on every cloud, failed uploads, startup checks, masked secrets, end to end and an
outage (fs and memory have no server to pause, no bucket and no credentials; fs failures: test_failures.py)."""

from __future__ import annotations

import base64
import dataclasses
import errno
import io
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest

from flight_writer import Service, Storage, StorageError
from flight_writer.config import StorageSettings
from flight_writer.lake.storage import OPENDAL_ERRORS

import emulators
from helpers import action, put, settings_for, wait_for

CLOUDS = ["s3", "azblob", "gcs"]
# each cloud's secret option: the emulators' own, and for GCS (whose emulator needs none) a bearer token
SECRET_OPTIONS = {"s3": "secret_access_key", "azblob": "account_key", "gcs": "token"}
# what the writer's error names when the bucket (Azure: container) is missing
MISSING_BUCKET = {"s3": "NoSuchBucket", "azblob": "ContainerNotFound", "gcs": "NotFound"}


@pytest.fixture(scope="session")
def running_emulators() -> Iterator[dict[str, emulators.Emulator]]:
    """Started on first use, one per service for the whole session; stopped by PID at the end."""
    started: dict[str, emulators.Emulator] = {}
    yield started
    for emulator in started.values():
        emulator.stop()


@pytest.fixture
def emulator_for(running_emulators):
    def get(service: str) -> emulators.Emulator:
        if service not in running_emulators:
            running_emulators[service] = emulators.start(service)
        return running_emulators[service]

    return get


@pytest.fixture(params=["fs", "memory", *CLOUDS])
def backend(request, tmp_path, emulator_for) -> Storage:
    service = request.param
    if service == "fs":
        return Storage.from_settings(StorageSettings(type="fs", root=str(tmp_path / "fs")))
    if service == "memory":
        return Storage.from_settings(StorageSettings(type="memory", root="/m/"))
    settings = emulator_for(service).settings(multipart_threshold=8 << 20, upload_chunk_bytes=5 << 20)
    return Storage.from_settings(settings)


# -- the contract ----------------------------------------------------------------------------------------
def test_write_read_list_delete(backend):
    backend.check()
    backend.write("ds/date=2026-01-01/hour=00/a.parquet", b"first", "application/vnd.apache.parquet")
    backend.write("ds/date=2026-01-01/hour=01/b.parquet", memoryview(b"second"))
    backend.write("other/c.bin", pa.py_buffer(b"third"))
    assert backend.read("ds/date=2026-01-01/hour=00/a.parquet") == b"first"
    assert backend.list("ds/") == ["ds/date=2026-01-01/hour=00/a.parquet", "ds/date=2026-01-01/hour=01/b.parquet"]
    backend.write("other/c.bin", b"replaced")  # same name: overwritten, never a second object
    assert backend.read("other/c.bin") == b"replaced" and backend.list("other/") == ["other/c.bin"]
    backend.delete("ds/date=2026-01-01/hour=00/a.parquet")
    assert backend.list("ds/") == ["ds/date=2026-01-01/hour=01/b.parquet"]
    assert [p for p in backend.list() if not p.startswith("_tmp/")] == [
        "ds/date=2026-01-01/hour=01/b.parquet",
        "other/c.bin",
    ]


def test_large_object(backend):
    data = os.urandom(20 << 20)  # above the 8 MiB threshold: multipart where the service has it
    backend.write("big/object.bin", data)
    assert backend.read("big/object.bin") == data


@contextmanager
def paused(emulator: emulators.Emulator) -> Iterator[None]:
    """The storage server stops answering (SIGSTOP) without losing what it holds, then resumes."""
    emulators.suspend(emulator.proc.pid)
    try:
        yield
    finally:
        emulator.proc.send_signal(signal.SIGCONT)


@pytest.mark.parametrize("service", CLOUDS)
@pytest.mark.parametrize("size", [3 << 20, 20 << 20], ids=["single", "multipart"])
def test_failed_upload_leaves_no_partial_object(emulator_for, service, size):
    emulator = emulator_for(service)
    settings = emulator.settings(multipart_threshold=8 << 20, upload_chunk_bytes=5 << 20)
    stalling = Storage.from_settings(dataclasses.replace(settings, timeout=1, io_timeout=1))
    data = os.urandom(size)
    with paused(emulator), pytest.raises(OPENDAL_ERRORS, match="timeout"):
        stalling.write("broken/object.bin", data)
    storage = Storage.from_settings(settings)
    # the server may still finish a request whose body it had whole; never a part of one
    assert storage.list("broken/") == [] or storage.read("broken/object.bin") == data
    if service == "s3" and size < settings.multipart_threshold:  # and a single request leaves no upload
        assert emulators.s3_client(emulator).list_multipart_uploads(Bucket=emulators.BUCKET).get("Uploads", []) == []


def test_failed_fs_write_leaves_no_object(tmp_path):
    storage = Storage.from_settings(StorageSettings(type="fs", root=str(tmp_path)))
    (tmp_path / "blocked").write_text("a file where a directory must go")
    with pytest.raises(Exception):  # noqa: B017
        storage.write("blocked/x.parquet", b"data")
    assert storage.list() == [] or all(not p.endswith(".partial") for p in storage.list())
    assert not list((tmp_path / "_tmp").glob("*.partial"))


# -- startup checks --------------------------------------------------------------------------------------
@pytest.mark.parametrize("service", CLOUDS)
def test_missing_bucket_fails_the_startup_check_in_one_line(emulator_for, service):
    storage = Storage.from_settings(emulator_for(service).settings(bucket="no-such-bucket-here"))
    with pytest.raises(StorageError, match=f"storage check failed at {service}:no-such-bucket-here/") as info:
        storage.check()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "service",
    [
        pytest.param("s3", marks=pytest.mark.skip(reason="moto_server accepts any credentials (no IAM auth set up)")),
        "azblob",
        pytest.param("gcs", marks=pytest.mark.skip(reason="gcp-storage-emulator checks no credentials")),
    ],
)
def test_bad_credentials_fail_the_startup_check(emulator_for, service):
    emulator = emulator_for(service)
    wrong = dict(emulator.options, **{SECRET_OPTIONS[service]: base64.b64encode(os.urandom(64)).decode()})
    storage = Storage.from_settings(emulator.settings(options=wrong))
    with pytest.raises(StorageError, match=rf"storage check failed at {service}:.*PermissionDenied"):
        storage.check()


@pytest.mark.parametrize("service", CLOUDS)
def test_startup_check_off_starts_and_reports_then_writes_once_fixed(tmp_path, emulator_for, service):
    emulator = emulator_for(service)
    bucket = f"late-{os.urandom(4).hex()}"
    storage = emulator.settings(bucket=bucket, startup_check=False)
    with Service(settings_for(tmp_path, storage=storage.__dict__)) as svc, flight.connect(svc.location) as c:
        fixed = False
        try:
            status = action(c, "status")
            assert status["last_error"].startswith(f"storage check failed at {service}:{bucket}/")
            [r] = put(c, "late", [pa.record_batch({"x": [1, 2]})])
            assert not svc.queue.flush("late", timeout=0)  # start writing it out, without waiting
            error = wait_for(lambda: "needs fixing" in (e := action(c, "status")["last_error"] or "") and e, "an error")
            assert MISSING_BUCKET[service] in error
            assert action(c, "ack", {"seq": r["seq"]})["acks"][0]["state"] == "queued"  # kept
            emulators.create_bucket(emulator, bucket)  # fixed: the kept data goes out
            fixed = True
            assert action(c, "ack", {"seq": r["seq"], "wait_ms": 30_000})["acks"][0]["state"] == "durable"
            assert action(c, "status")["last_error"] is None
        finally:
            if not fixed:  # let the stop drain instead of retrying forever
                emulators.create_bucket(emulator, bucket)


@pytest.mark.parametrize("service", CLOUDS)
def test_secrets_are_masked_in_status_and_log(tmp_path, emulator_for, caplog_loguru, service):
    emulator = emulator_for(service)
    key = SECRET_OPTIONS[service]
    options = emulator.options if key in emulator.options else {key: "a-token-the-emulator-ignores"}
    storage = emulator.settings(options=options)
    with Service(settings_for(tmp_path, storage=storage.__dict__)) as svc, flight.connect(svc.location) as c:
        status = action(c, "status")
    assert status["storage"] == {
        "service": service,
        "root": storage.root,
        "bucket": emulators.BUCKET,
        "endpoint": storage.endpoint,
    }
    assert f"'{key}': '***'" in caplog_loguru.text
    assert f"{key}': '{options[key]}'" not in caplog_loguru.text


# -- end to end per cloud --------------------------------------------------------------------------------
@pytest.mark.parametrize("service", CLOUDS)
def test_end_to_end_parquet_in_the_bucket(tmp_path, emulator_for, service):
    storage = emulator_for(service).settings()
    batches = [pa.record_batch({"i": pa.array(range(k * 100, k * 100 + 100)), "s": ["v"] * 100}) for k in range(5)]
    with Service(settings_for(tmp_path, storage=storage.__dict__)) as svc, flight.connect(svc.location) as c:
        put(c, "events/app", batches)
        action(c, "flush")
        paths = svc.storage.list("events/app/")
        assert paths and all(p.endswith(".parquet") and "/date=" in p and "/hour=" in p for p in paths)
        table = pa.concat_tables(pq.read_table(io.BytesIO(svc.storage.read(p))) for p in paths)
    assert table.sort_by("i").replace_schema_metadata(None).equals(pa.Table.from_batches(batches))


# -- outage ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("service", CLOUDS)
def test_an_outage_mid_ingest_loses_nothing_and_duplicates_nothing(tmp_path, emulator_for, service):
    emulator = emulator_for(service)
    storage = emulator.settings(timeout=1, io_timeout=1)
    sections = {
        "storage": storage.__dict__,
        "writer": {"flush_interval": 0.05, "max_file_rows": 500, "retry_initial_delay": 0.05, "retry_max_delay": 0.2},
    }
    with Service(settings_for(tmp_path, **sections)) as svc, flight.connect(svc.location) as c:
        sent: list[int] = []

        def produce(rounds: int) -> None:
            for _ in range(rounds):
                start = len(sent) * 100
                put(c, "outage", [pa.record_batch({"i": pa.array(range(start, start + 100))})])
                sent.append(start)

        produce(10)
        with paused(emulator):  # the service stops answering in the middle of the ingest
            produce(20)  # producers keep going: the queue holds the data
            status = wait_for(lambda: (s := action(c, "status"))["last_error"] and s, "an upload to time out")
            assert "timeout" in status["last_error"] and status["error_for_s"] >= 0
            assert status["durable_through"] < status["received_seq"]
        produce(10)  # the service is back, on the same port, with everything it had
        assert action(c, "flush")["durable_through"] == len(sent)
        assert action(c, "status")["last_error"] is None
        paths = svc.storage.list("outage/")
        rows = [v for p in paths for v in pq.read_table(io.BytesIO(svc.storage.read(p))).column("i").to_pylist()]
    assert sorted(rows) == list(range(len(sent) * 100))  # every row, exactly once


def test_a_conditional_write_refuses_a_taken_name(backend):
    """Uploads never replace an object (a plan stored twice keeps the first, which a table may name). moto's
    S3, Azurite and a local disk refuse a taken name; the GCS emulator ignores the condition (the last
    write wins there, as every upload did before), and so may the memory service."""
    backend.write("cond/a.parquet", b"first", replace=False)
    refused = True
    try:
        backend.write("cond/a.parquet", b"second", replace=False)
    except FileExistsError:
        pass
    else:
        refused = False
    if backend.service in ("fs", "s3", "azblob"):
        assert refused and backend.read("cond/a.parquet") == b"first"
    else:
        assert backend.read("cond/a.parquet") == (b"first" if refused else b"second")


def test_an_upload_renames_where_the_filesystem_has_no_hard_links(tmp_path, monkeypatch):
    """Some FUSE and network mounts have no hard links: the upload then renames, as before (the real thing
    does not run here, so os.link is made to fail as it does there)."""
    storage = Storage.from_settings(StorageSettings(type="fs", root=str(tmp_path)))
    tmp, local = storage.local_tmp()
    with open(local, "wb") as f:
        f.write(b"object")

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    storage.commit(tmp, "ds/a.parquet", replace=False)
    assert (tmp_path / "ds" / "a.parquet").read_bytes() == b"object" and not os.path.exists(local)
