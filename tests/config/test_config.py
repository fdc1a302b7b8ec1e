"""Settings: defaults, file, environment overrides, the seed's variables, and clear errors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

import flight_writer
from flight_writer.config import ConfigError, Settings, load_settings

from helpers import REPO, write_config


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in ("QUEUE_TYPE", "STORAGE_TYPE", "STORAGE_PATH"):
        monkeypatch.delenv(var, raising=False)
    import os

    for var in [v for v in os.environ if v.startswith("FLIGHT_WRITER_")]:
        monkeypatch.delenv(var)


def test_configs_settings_toml_lists_every_default():
    assert load_settings(REPO / "configs" / "settings.toml") == Settings()
    text = (REPO / "configs" / "settings.toml").read_text()
    for section in dataclasses.fields(Settings):
        for f in dataclasses.fields(section.default_factory()):  # type: ignore[misc]
            assert f"\n{f.name} =" in text or f"[{section.name}.{f.name}]" in text, (
                f"{section.name}.{f.name} missing from configs/settings.toml"
            )


def test_environment_overrides_file(monkeypatch, tmp_path):
    cfg = tmp_path / "s.toml"
    cfg.write_text('[writer]\ncompression = "lz4"\nthreads = 3\n[queue]\nmax_bytes = "64MiB"\n')
    monkeypatch.setenv("FLIGHT_WRITER_WRITER__COMPRESSION", "snappy")
    monkeypatch.setenv("FLIGHT_WRITER_QUEUE__PUT_TIMEOUT", "2.5")
    monkeypatch.setenv("FLIGHT_WRITER_LOG__JSON", "true")
    monkeypatch.setenv("FLIGHT_WRITER_STORAGE__OPTIONS__BUCKET", "events")
    s = load_settings(cfg)
    assert s.writer.compression == "snappy" and s.writer.threads == 3
    assert s.queue.max_bytes == 64 * 1024 * 1024 and s.queue.put_timeout == 2.5
    assert s.log.json is True
    assert s.storage.options == {"bucket": "events"}


def test_seed_variables(monkeypatch):
    monkeypatch.setenv("QUEUE_TYPE", "memory")
    monkeypatch.setenv("STORAGE_TYPE", "memory")
    monkeypatch.setenv("STORAGE_PATH", "/lake")
    s = load_settings()
    assert (s.queue.type, s.storage.type, s.storage.root) == ("memory", "memory", "/lake")
    monkeypatch.setenv("FLIGHT_WRITER_STORAGE__ROOT", "/ours")  # our own prefix ranks above the seed's
    assert load_settings().storage.root == "/ours"


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"queue": {"type": "kafka"}}, "queue.type must be one of memory, wal, nats, got 'kafka'"),
        ({"queue": {"max_bytes": -1}}, "queue.max_bytes must be positive"),
        ({"queue": {"max_bytes": "lots"}}, "queue.max_bytes must be an integer, got 'lots'"),
        ({"writer": {"compression": "brotli2"}}, "writer.compression must be one of zstd, snappy"),
        ({"queue": {"compression": "snappy"}}, "queue.compression must be one of lz4, zstd, none, got 'snappy'"),
        ({"writer": {"flush_interval": 0}}, "writer.flush_interval must be positive"),
        ({"writer": {"threads": "two"}}, "writer.threads must be an integer"),
        ({"writer": {"max_file_byte": 1}}, "unknown setting writer.max_file_byte"),
        ({"storage": {"type": "S3 bucket"}}, "storage.type must be an OpenDAL service name"),
        ({"log": {"json": "maybe"}}, "log.json must be true or false"),
        ({"sever": {"location": "x"}}, r"unknown settings section \[sever\]"),
        ({"server": {"location": "http://x:1"}}, "server.location must be a grpc:// URI"),
        ({"queue": {"streams": 2}}, "queue.streams = 2 shards NATS streams: queue.type must be nats"),
        (
            {"queue": {"type": "nats", "streams": 4, "stream_slots": 2}},
            r"stream_slots must be 0 or at least queue.streams \(4\), got 2",
        ),
        (
            {"queue": {"type": "wal", "stream_slots": 4}},
            "queue.stream_slots = 4 shards NATS streams: queue.type must be nats",
        ),
        (
            {"queue": {"type": "nats", "stream_slots": 2000}},
            "queue.streams and stream_slots must be at most 1024, got 2000",
        ),
    ],
)
def test_invalid_values_name_the_setting(sections, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(overrides=sections)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLIGHT_WRITER_")}
    return subprocess.run(
        [sys.executable, "-m", "flight_writer.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**clean, **(env or {})},
        timeout=60,
    )


def test_invalid_value_stops_startup_with_one_line():
    done = run_cli("serve", env={"FLIGHT_WRITER_WRITER__COMPRESSION": "brotli2"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "flight-writer: invalid configuration: writer.compression must be one of zstd, snappy, lz4, gzip, "
        "none, got 'brotli2'"
    ]


def test_unknown_storage_service_stops_startup_with_one_line():
    done = run_cli("serve", env={"STORAGE_TYPE": "nosuchstore", "FLIGHT_WRITER_SERVER__LOCATION": "grpc://127.0.0.1:0"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "flight-writer: cannot start: storage.type 'nosuchstore' is not an OpenDAL service this build has"
    ]


def test_missing_config_file():
    done = run_cli("serve", "--config", "/nonexistent.toml")
    assert done.returncode == 2 and "config file '/nonexistent.toml' does not exist" in done.stderr


def test_check_command(tmp_path, server_process):
    server = server_process(write_config(tmp_path / "s.toml", tmp_path / "data"))
    ok = run_cli("check", "--location", server.location)
    assert ok.returncode == 0 and '"received_seq": 0' in ok.stdout
    server.close()
    assert run_cli("check", "--location", server.location).returncode == 1


@pytest.mark.parametrize(("env", "allocator"), [({}, "jemalloc"), ({"ARROW_DEFAULT_MEMORY_POOL": "system"}, "system")])
def test_serve_runs_on_jemalloc_unless_the_environment_says_otherwise(tmp_path, server_process, env, allocator):
    """The command line chooses Arrow's allocator before pyarrow is imported (flight_writer/allocator.py); the
    package itself imports no pyarrow, or the choice would come too late."""
    server = server_process(write_config(tmp_path / "s.toml", tmp_path / "data"), env=env)
    assert f"arrow-allocator={allocator} " in server.wait_for_log("listening on")
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, flight_writer; print('pyarrow' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert imported.stdout.strip() == "False"


def test_json_logs_and_masked_secrets(tmp_path, server_process):
    import json

    cfg = write_config(tmp_path / "s.toml", tmp_path / "data", '[log]\njson = true\nlevel = "debug"\n')
    server = server_process(cfg, env={"FLIGHT_WRITER_STORAGE__OPTIONS__SECRET_ACCESS_KEY": "hunter2"})
    line = server.wait_for_log("listening on")
    record = json.loads(line)
    assert "listening on" in record["text"] and len(record["text"]) < 400  # was ~3 KB; settings at debug
    options = json.loads(server.wait_for_log("setting storage.options"))["text"]
    assert "hunter2" not in server.log and "'secret_access_key': '***'" in options


def test_public_names_are_pinned():
    assert sorted(flight_writer.__all__) == sorted(
        [
            "ACK_HEADER",
            "ConfigError",
            "DurabilityTracker",
            "FlightWriterServer",
            "MemoryQueue",
            "Queue",
            "QueueFull",
            "Service",
            "Settings",
            "Storage",
            "StorageError",
            "Writer",
            "__version__",
            "load_settings",
        ]
    )
    for name in flight_writer.__all__:
        assert hasattr(flight_writer, name)


def test_key_like_options_and_endpoint_passwords_are_masked():
    from flight_writer.config import build_settings

    s = build_settings(
        {
            "storage": {
                "endpoint": "https://user:hunter2@minio.example:9000/x",
                "options": {"access_key_id": "AKIA1", "server_side_encryption_customer_key": "k2", "region": "eu"},
            }
        }
    )
    shown = s.masked()["storage"]
    assert shown["options"] == {"access_key_id": "***", "server_side_encryption_customer_key": "***", "region": "eu"}
    assert shown["endpoint"] == "https://user:***@minio.example:9000/x"
    assert "hunter2" not in str(s.masked()) and "AKIA1" not in str(s.masked())
    import opendal

    from flight_writer.lake.storage import Storage

    status = Storage(opendal.Operator("memory"), "s3", "", s.storage).describe()  # what `status` shows
    assert status["endpoint"] == "https://user:***@minio.example:9000/x"


@pytest.mark.parametrize(
    ("location", "local"),
    [
        ("grpc://127.0.0.1:8815", True),
        ("grpc+tcp://localhost:1", True),
        ("grpc://[::1]:1", True),
        ("grpc+unix:///tmp/fw.sock", True),
        ("grpc://0.0.0.0:8815", False),
        ("grpc://[::]:8815", False),
        ("grpc://10.1.2.3:8815", False),
        ("grpc://ingest.example:8815", False),
    ],
)
def test_listening_beyond_loopback_needs_principals_or_allow_anonymous(tmp_path, location, local):
    from flight_writer.config import build_settings, local_only

    assert local_only(location) is local
    if local:
        build_settings({"server": {"location": location}})
        return
    with pytest.raises(ConfigError, match=r"takes connections from other machines and no auth\.principals_file"):
        build_settings({"server": {"location": location}})
    build_settings({"server": {"location": location}, "auth": {"allow_anonymous": True}})
    principals = tmp_path / "p.toml"
    principals.write_text("")
    build_settings({"server": {"location": location}, "auth": {"principals_file": str(principals)}})


def test_make_serve_listens_on_loopback_and_serve_refuses_0000_without_auth():
    """make serve used to listen on 0.0.0.0 with no authentication at all."""
    from flight_writer.config import local_only

    assert local_only(load_settings(REPO / "configs" / "settings.toml").server.location)
    done = run_cli("serve", env={"FLIGHT_WRITER_SERVER__LOCATION": "grpc://0.0.0.0:0"})  # refused before listening
    assert done.returncode == 2 and "auth.allow_anonymous = true" in done.stderr


def test_the_command_line_clients_variables_are_not_settings(monkeypatch):
    """A shell set up for flight-writer status/send (FLIGHT_WRITER_URL, _TOKEN, _USER, _PASSWORD) runs serve
    too: they used to stop it with 'unknown settings section [url]'."""
    for name, value in (("URL", "grpc://10.0.0.1:8815"), ("TOKEN", "fw_x"), ("USER", "me"), ("PASSWORD", "pw")):
        monkeypatch.setenv(f"FLIGHT_WRITER_{name}", value)
    monkeypatch.setenv("FLIGHT_WRITER_QUEUE__MAX_BYTES", "1MiB")  # real settings still apply
    assert load_settings().queue.max_bytes == 1 << 20


def test_a_storage_root_that_cannot_be_a_directory_is_named_at_start(tmp_path):
    (tmp_path / "afile").write_text("a file where a folder must go")
    done = run_cli("serve", env={"STORAGE_PATH": str(tmp_path / "afile" / "sub")})
    assert done.returncode == 2 and "storage.root" in done.stderr and "cannot be made a directory" in done.stderr
