"""The commands for people: ``status``, ``top`` and ``send``, against a real server on a loopback port.
``top`` and the progress bar run in a real terminal (tmux) and are checked on what the screen shows."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest

from flight_writer import __version__
from flight_writer.cli import main
from flight_writer.console.common import lag
from flight_writer.console.send import durable_summary
from flight_writer.ingest.auth import hash_secret, new_token

from emulators import free_port
from helpers import REPO, action, put, read_dataset, running, wait_for, write_config

N = 2_500
TABLE = pa.table(
    {
        "i": pa.array(range(N), pa.int64()),
        "service": pa.array([f"svc-{i % 7}" for i in range(N)]),
        "ms": pa.array([i / 8 for i in range(N)], pa.float64()),
    }
)


def cli(*argv: str) -> int:
    return main(list(argv))


def write_inputs(directory: Path) -> dict[str, Path]:
    """TABLE in each format send reads (the Arrow IPC file and stream formats both)."""
    files = {
        "parquet": directory / "t.parquet",
        "arrow-file": directory / "t.arrow",
        "arrow-stream": directory / "t.arrows",
        "csv": directory / "t.csv",
        "jsonl": directory / "t.jsonl",
    }
    pq.write_table(TABLE, files["parquet"], row_group_size=1_000)
    with pa.ipc.new_file(files["arrow-file"], TABLE.schema) as w:
        w.write_table(TABLE, max_chunksize=900)
    with pa.ipc.new_stream(files["arrow-stream"], TABLE.schema) as w:
        w.write_table(TABLE, max_chunksize=900)
    pa_csv.write_csv(TABLE, files["csv"])
    files["jsonl"].write_text("".join(json.dumps(row) + "\n" for row in TABLE.to_pylist()))
    return files


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    directory = tmp_path / "in"
    directory.mkdir()
    return write_inputs(directory)


# -- status ------------------------------------------------------------------------------------------------
def test_status_prints_a_table_and_json(service, client, capsys):
    put(client, "demo/spans", [TABLE.to_batches()[0]])
    assert cli("status", "--location", service.location) == 0
    table = capsys.readouterr().out
    assert f"flight-writer 0.1.0 at {service.location}" in table
    for line in ("received seq", "durable through seq", "lag (seqs)", "last error", "none", "storage"):
        assert line in table
    assert "2,500" in table  # rows received, with thousands separators

    assert cli("status", "--location", service.location, "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["received_seq"] == 1 and status["received_rows"] == N


def test_status_without_a_server_is_one_line_and_exit_1(capsys):
    assert cli("status", "--location", f"grpc://127.0.0.1:{free_port()}") == 1
    err = capsys.readouterr().err
    assert err.startswith("flight-writer: no answer from grpc://127.0.0.1:") and err.count("\n") == 1
    assert cli("top", "--once", "--location", f"grpc://127.0.0.1:{free_port()}") == 1
    assert "no answer from" in capsys.readouterr().err


def test_top_with_a_basic_login_and_no_server_is_one_line_too(capsys, monkeypatch):
    monkeypatch.setenv("FLIGHT_WRITER_USER", "someone")
    monkeypatch.setenv("FLIGHT_WRITER_PASSWORD", "something-long-enough")
    assert cli("top", "--once", "--location", f"grpc://127.0.0.1:{free_port()}") == 1
    err = capsys.readouterr().err
    assert err.startswith("flight-writer: no answer from grpc://127.0.0.1:") and err.count("\n") == 1


def test_bearer_token_and_basic_login(data_root, tmp_path, inputs, capsys, monkeypatch):
    principals = tmp_path / "principals.toml"
    secret = "team-a-secret-0123456789"
    token, token_hash = new_token()
    principals.write_text(f"""
[principals.team-a]
secret = ["{hash_secret(secret)}", "{token_hash}"]
datasets = ["team-a/*"]
actions = ["status", "ack"]
""")
    with running(data_root, auth={"principals_file": str(principals)}) as svc:
        assert cli("status", "--location", svc.location) == 1
        assert "no credentials" in capsys.readouterr().err
        monkeypatch.setenv("FLIGHT_WRITER_TOKEN", token)
        assert cli("status", "--location", svc.location, "--json") == 0
        assert json.loads(capsys.readouterr().out)["received_seq"] == 0
        monkeypatch.delenv("FLIGHT_WRITER_TOKEN")
        monkeypatch.setenv("FLIGHT_WRITER_USER", "team-a")
        monkeypatch.setenv("FLIGHT_WRITER_PASSWORD", secret)
        assert cli("send", "team-a/spans", str(inputs["parquet"]), "--durable", "--location", svc.location) == 0
        assert cli("send", "team-b/spans", str(inputs["parquet"]), "--location", svc.location) == 1
        err = capsys.readouterr().err
        assert "flight-writer: team-b/spans: principal 'team-a' may not write dataset 'team-b/spans'" in err
        assert "Traceback" not in err
        assert read_dataset(data_root, "team-a/spans", "i") == TABLE


def test_top_once_prints_whole_dataset_names_and_no_keys(service, client, capsys, monkeypatch):
    """Not a terminal (a pipe, a file): the view is as wide as it needs, so long dataset names are not cut;
    and --once reads no keys, so it does not say how to quit."""
    monkeypatch.delenv("COLUMNS", raising=False)
    name = "org-" + "a" * 60 + "/team-" + "b" * 40 + "/spans-" + "c" * 50
    put(client, name, [TABLE.to_batches()[0]])
    assert cli("top", "--once", "--interval", "0.1", "--location", service.location) == 0
    out = capsys.readouterr().out
    assert any(line.strip().startswith(name + " ") for line in out.splitlines()), out
    assert "quits" not in out and "rates over 0.1 s" in out


def test_the_lag_in_seqs_is_shown_only_where_seqs_are_one_series():
    """received_seq - durable_through counts the batches not yet durable while seqs are dense; under a seq
    stride (NATS streams or slots > 1) seqs of several streams interleave (a new user saw a lag of 211 with
    one batch pending, stride 4), so status and top show none."""
    assert lag({"received_seq": 10, "durable_through": 7}) == 3
    assert lag({"received_seq": 10, "durable_through": 7, "nats_streams": 1, "nats_stream_slots": 1}) == 3
    assert lag({"received_seq": 224, "durable_through": 13, "nats_streams": 3, "nats_stream_slots": 4}) is None


# -- the command itself ------------------------------------------------------------------------------------
def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        cli("--version")
    assert exit.value.code == 0
    assert capsys.readouterr().out == f"flight-writer {__version__}\n"


def test_help_describes_the_product_and_every_command(capsys):
    with pytest.raises(SystemExit):
        cli("--help")
    out = capsys.readouterr().out
    assert "console/" not in out and "Arrow Flight ingestion server" in out
    for command in ("serve", "config", "check", "hash-secret", "new-token", "status", "top", "send"):
        assert re.search(rf"^    {command}\b", out, re.M), command
    assert "flight-writer config > settings.toml" in out


def test_config_prints_the_default_settings_file(capsys):
    assert cli("config") == 0
    assert capsys.readouterr().out == (REPO / "configs" / "settings.toml").read_text()
    with pytest.raises(SystemExit):
        cli("config", "--help")
    assert "the file to start from" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv", [["status", "--json"], ["status"], ["top", "--once", "--interval", "0.1"], ["config"]], ids=" ".join
)
def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(service, argv):
    """``flight-writer status --json | head -1``: the reader is gone before the command writes. No traceback,
    no 'Exception ignored' at exit, and exit status 1 (Python's advice for a closed pipe; rich's too)."""
    command = [sys.executable, "-m", "flight_writer.cli", *argv]
    if argv[0] != "config":
        command += ["--location", service.location]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None
    proc.stdout.close()  # before the command has even imported pyarrow: its first write finds no reader
    _, err = proc.communicate(timeout=60)
    assert err == "" and proc.returncode == 1, err


# -- send --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["parquet", "arrow-file", "arrow-stream", "csv", "jsonl"])
def test_send_each_format(service, client, data_root, inputs, kind, capsys):
    assert cli("send", f"in/{kind}", str(inputs[kind]), "--batch-rows", "1000", "--location", service.location) == 0
    out, err = capsys.readouterr()
    assert out.startswith("sent 2,500 rows (") and "in 3 batches to in/" in out
    assert "100%" in err and "2,500 rows" in err  # the progress bar's last frame
    action(client, "flush")
    assert read_dataset(data_root, f"in/{kind}", "i") == TABLE


def test_send_durable_returns_once_stored_and_a_second_send_stores_nothing(service, data_root, inputs, capsys):
    files = [str(inputs["parquet"]), str(inputs["csv"])]
    assert cli("send", "demo/spans", *files, "--batch-rows", "1000", "--durable", "--location", service.location) == 0
    out = capsys.readouterr().out
    assert "sent 5,000 rows" in out and "in 6 batches" in out and re.search(r"; all durable, in \d+ files?\n", out)
    # no flush: --durable waited until the writer stored it all (the flush interval is 600 s here)
    assert read_dataset(data_root, "demo/spans").num_rows == 2 * N
    # the same files again: the same batch ids, so the server keeps nothing twice
    assert cli("send", "demo/spans", *files, "--batch-rows", "1000", "--durable", "--location", service.location) == 0
    assert "6 batches the server already had" in capsys.readouterr().out
    assert read_dataset(data_root, "demo/spans", "i") == pa.concat_tables([TABLE, TABLE]).sort_by("i")


def test_send_durable_speaks_of_its_own_seqs_in_files_counted_right(service, client, inputs, capsys):
    """Another client's batches wait in the queue (seqs 1-2, not durable): this send's own seqs are durable
    all the same, and the summary says so, not the server's durable_through (which the others hold back)."""
    put(client, "others/spans", [TABLE.to_batches()[0]] * 2)
    argv = ["send", "demo/own", str(inputs["parquet"]), "--batch-rows", "1000", "--durable"]
    assert cli(*argv, "--location", service.location) == 0
    out = capsys.readouterr().out
    assert out.endswith("to demo/own: seqs 3-5; all durable, in 1 file\n"), out
    assert action(client, "status")["durable_through"] == 0  # what the old summary printed as "durable through"


def test_durable_summary_wording():
    def summary(durable: int, files: int, failed: int = 0, unnamed: int = 0) -> str:
        acks = [{"seq": i, "state": "failed"} for i in range(failed)]
        paths = [f"f{i}.parquet" for i in range(files)]
        return durable_summary({"durable": durable, "files": paths, "unnamed": unnamed, "failed": acks})

    assert summary(4, 1) == "all durable, in 1 file"
    assert summary(4, 2) == "all durable, in 2 files"
    assert summary(1, 0, unnamed=1) == "all durable"  # a zero-row batch: durable, in no file
    assert summary(3, 2, unnamed=1) == "all durable, in at least 2 files"  # a file the server no longer names
    assert summary(3, 1, failed=1) == "3 of 4 seqs durable, in 1 file; 1 seq failed"
    assert summary(0, 0, failed=2) == "0 of 2 seqs durable; 2 seqs failed"


def test_send_stdin(service, client, data_root, inputs):
    result = run_cli("send", "from/stdin", "-", "--format", "csv", "--location", service.location, stdin=inputs["csv"])
    assert result.returncode == 0, result.stderr
    assert "sent 2,500 rows" in result.stdout
    action(client, "flush")
    assert read_dataset(data_root, "from/stdin", "i") == TABLE


def test_send_bad_input_is_one_line(service, tmp_path, inputs, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.csv").write_text("a,b\n1,2\n1,2,3\n")
    cases = [
        (["notes.txt"], "cannot tell the format of"),
        (["missing.parquet"], "no such file: "),
        (["-"], "reading stdin (-) needs --format"),
        (["broken.csv"], "cannot read "),
        ([str(inputs["csv"]), "--format", "parquet"], "as parquet: Parquet magic bytes not found"),
    ]
    for argv, message in cases:
        argv = [str(tmp_path / a) if a.endswith((".txt", ".parquet", ".csv")) and "/" not in a else a for a in argv]
        assert cli("send", "demo/x", *argv, "--location", service.location) == 1, argv
        err = capsys.readouterr().err
        assert message in err and err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert (
        cli("send", "demo/x", str(inputs["csv"]), "--location", f"grpc://127.0.0.1:{free_port()}", "--retry-for", "0.3")
        == 1
    )
    assert "no answer from grpc://127.0.0.1:" in capsys.readouterr().err


def test_send_resumes_after_the_server_restarts(tmp_path, server_process):
    """A real restart mid-send: the sender reads an Arrow stream from stdin, the test lets 3 batches
    through, kills the server (SIGKILL), starts it again on the same port and WAL, then sends the rest.
    Every batch ends up in Parquet exactly once."""
    port = free_port()
    config = write_config(
        tmp_path / "settings.toml",
        tmp_path / "data",
        f'[queue]\ntype = "wal"\npath = "{tmp_path / "wal"}"\n',
    )
    config.write_text(config.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))
    server = server_process(config)
    batches = TABLE.to_batches(max_chunksize=500)  # 5 batches
    argv = ["send", "demo/resumed", "-", "--format", "arrow", "--batch-rows", "500", "--durable", "--retry-for", "30"]
    sender = subprocess.Popen(
        [*FW.split(), *argv, "--location", server.location],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert sender.stdin is not None
    stream = pa.ipc.new_stream(sender.stdin, TABLE.schema)
    for batch in batches[:3]:
        stream.write_batch(batch)
    sender.stdin.flush()
    with flight.connect(server.location) as c:
        wait_for(lambda: action(c, "status")["received_batches"] == 3, "3 batches received")
    server.close()  # SIGKILL
    stream.write_batch(batches[3])  # the sender finds the connection gone
    sender.stdin.flush()
    server = server_process(config)
    stream.write_batch(batches[4])
    stream.close()
    sender.stdin.close()
    sender.wait(timeout=60)
    out, err = sender.stdout.read().decode(), sender.stderr.read().decode()  # type: ignore[union-attr]
    sender.stdout.close()  # type: ignore[union-attr]
    sender.stderr.close()  # type: ignore[union-attr]
    assert sender.returncode == 0, err
    assert "connection lost" in err and "reconnected 1 times" in out, err
    assert "sent 2,500 rows" in out and "; all durable, in " in out
    assert read_dataset(tmp_path / "data", "demo/resumed", "i") == TABLE


# -- in a terminal -----------------------------------------------------------------------------------------
class Tmux:
    """A tmux server of our own (its own socket), one 120x40 session running a command."""

    def __init__(self, command: str) -> None:
        self.socket = f"fw-test-{uuid.uuid4().hex[:8]}"
        # the shell stays after the command, to show its exit status; LINES and COLUMNS (set by some
        # parents) would make rich draw for another size than the pane's
        self._tmux(
            "new-session",
            "-d",
            "-x",
            "120",
            "-y",
            "40",
            f"cd {REPO} && unset LINES COLUMNS && {command}; echo EXITED $?; sleep 60",
        )

    def _tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args], check=True, capture_output=True, text=True
        ).stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p")

    def wait_for(self, *texts: str, timeout: float = 30) -> str:
        def ready() -> str | None:
            screen = self.screen()
            return screen if all(t in screen for t in texts) else None

        try:
            return wait_for(ready, f"{texts} on screen", timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen:\n{self.screen()}") from None

    def wait_for_row(self, label: str, test, timeout: float = 30) -> str:
        """The screen once the row starting with ``label`` passes ``test`` (on its cells)."""

        def ready() -> str | None:
            screen = self.screen()
            cells = row(screen, label)
            return screen if cells and test(cells) else None

        try:
            return wait_for(ready, f"row {label!r} as expected on screen", timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the screen:\n{self.screen()}") from None

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", *keys)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def tmux() -> Iterator[type[Tmux]]:
    if shutil.which("tmux") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("tmux is needed for the terminal tests (apt-get install tmux)")
        pytest.skip("tmux is not installed (apt-get install tmux)")
    started: list[Tmux] = []

    def start(command: str) -> Tmux:
        started.append(Tmux(command))
        return started[-1]

    yield start  # type: ignore[misc]
    for t in started:
        t.close()


FW = f"{sys.executable} -m flight_writer.cli"


def test_top_shows_throughput_lag_and_quits_on_q(data_root, tmux):
    with running(data_root) as svc, flight.connect(svc.location) as client:
        term = tmux(f"{FW} top --interval 0.3 --location {svc.location}")
        term.wait_for("flight-writer top", "throughput", "durability", "last error: none", "q or Ctrl-C quits")
        put(client, "demo/spans", TABLE.to_batches(max_chunksize=500))
        # the poll after the put: a rate from the counters' change, and the totals
        screen = term.wait_for_row("rows in", lambda cells: cells[1] not in ("-", "0.0") and cells[2] == "2,500")
        assert row(screen, "batches in")[2] == "5" and row(screen, "Arrow bytes in")[2].endswith("KiB")
        assert row(screen, "lag (received - durable seq)")[1] == "5"
        assert row(screen, "received seq")[1] == "5" and row(screen, "pending batches")[1] == "5"
        action(client, "flush")
        screen = term.wait_for_row("lag (received - durable seq)", lambda cells: cells[1] == "0")
        assert row(screen, "durable through")[1] == "5" and row(screen, "files out")[2] == "1"
        term.keys("q")
        term.wait_for("EXITED 0")


def test_top_survives_the_server_going_away_and_quits_on_ctrl_c(data_root, tmux):
    with running(data_root) as svc:
        term = tmux(f"{FW} top --interval 0.2 --location {svc.location}")
        term.wait_for("flight-writer top", "durability")
    term.wait_for("no answer since")  # the server stopped; top goes on polling
    term.keys("C-c")
    term.wait_for("EXITED 0")


def test_send_progress_bar_in_a_terminal(service, client, data_root, tmp_path, tmux):
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    term = tmux(f"{FW} send live/bar - --format arrow --batch-rows 500 --location {service.location} < {fifo}")
    with open(fifo, "wb") as sink:
        stream = pa.ipc.new_stream(sink, TABLE.schema)
        batches = TABLE.to_batches(max_chunksize=500)
        for batch in batches[:2]:
            stream.write_batch(batch)
        sink.flush()
        term.wait_for("stdin", "1,000 rows", "rows/s")  # the bar moves while stdin is still open
        assert "EXITED" not in term.screen()
        for batch in batches[2:]:
            stream.write_batch(batch)
        stream.close()
    screen = term.wait_for("EXITED 0")
    assert "2,500 rows" in screen and "100%" in screen and "sent 2,500 rows" in screen
    action(client, "flush")
    assert read_dataset(data_root, "live/bar", "i") == TABLE


# -- helpers -----------------------------------------------------------------------------------------------
def row(screen: str, label: str) -> list[str]:
    """The cells (split at 2 or more spaces) of the first line whose first cell is ``label``; [] if none."""
    for line in screen.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == label:
            return cells
    return []


def run_cli(*argv: str, stdin: Path) -> subprocess.CompletedProcess[str]:
    with open(stdin, "rb") as f:
        return subprocess.run(
            [sys.executable, "-m", "flight_writer.cli", *argv],
            stdin=f,
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )


def test_send_counts_every_seq_of_a_batch_split_by_partition(data_root, tmp_path, capsys):
    """With a partition field a batch of two services is two seqs: the summary lists both, one batch."""
    csv = tmp_path / "two.csv"
    csv.write_text("service,v\napi,1\ndb,2\n")
    with running(data_root, datasets={"fields": ["service"]}) as svc:
        assert cli("send", "split/spans", str(csv), "--durable", "--location", svc.location) == 0
    out = capsys.readouterr().out
    assert "sent 2 rows (" in out and "in 1 batch to split/spans: seqs 1-2; all durable, in 2 files" in out


def test_a_refused_stream_is_said_as_the_refusal_not_as_a_lost_connection(data_root, tmp_path, capsys):
    """The server refuses at stream start: the reply stream may end before the error is read. That used
    to be taken for a lost connection about half the time ("reconnecting to re-send")."""
    csv = tmp_path / "x.csv"
    csv.write_text("date,v\n2026-01-01,1\n")  # a column named like a partition column: refused at start
    with running(data_root) as svc:
        for _ in range(10):
            assert cli("send", "refused/spans", str(csv), "--location", svc.location) == 1
            err = capsys.readouterr().err
            assert "partition" in err and "reconnect" not in err and "connection lost" not in err, err
