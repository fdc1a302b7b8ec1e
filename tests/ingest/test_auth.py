"""Authentication (bearer secrets, Flight's Basic handshake) and per-principal rights on every door."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from test_tls import pki, tls_server  # noqa: F401 - pki is a fixture

from flight_writer.ingest import auth as auth_module
from flight_writer.ingest.auth import Authenticator, LoginsBusy, hash_secret, load_principals, new_token
from flight_writer.ingest.refusals import Refusals

from helpers import REPO, action, put, read_dataset, running, send

TEAM_A = "team-a-secret-0123456789"  # passwords: Basic login (scrypt)
ADMIN = "admin-secret-0123456789ab"
TEAM_A_TOKEN, TEAM_A_TOKEN_HASH = new_token()  # machine tokens: Bearer (SHA-256)
ADMIN_TOKEN, ADMIN_TOKEN_HASH = new_token()
BATCH = pa.record_batch({"i": pa.array(range(10), pa.int64())})


@pytest.fixture
def principals(tmp_path: Path) -> Path:
    path = tmp_path / "principals.toml"
    path.write_text(f"""
[principals.team-a]
secret = ["{hash_secret(TEAM_A)}", "{TEAM_A_TOKEN_HASH}"]
datasets = ["team-a/*"]
actions = ["status", "ack"]

[principals.admin]
secret = ["{hash_secret(ADMIN)}", "{ADMIN_TOKEN_HASH}"]
datasets = ["*"]
actions = ["status", "ack", "flush"]
replace = true
""")
    return path


def bearer(secret: str) -> flight.FlightCallOptions:
    return flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {secret}".encode())])


def test_no_credentials_or_wrong_ones_get_unauthenticated(data_root, principals, caplog_loguru):
    with running(data_root, auth={"principals_file": str(principals)}) as svc, flight.connect(svc.location) as c:
        with pytest.raises(flight.FlightUnauthenticatedError, match="no credentials"):
            list(c.do_action(flight.Action("status", b"")))
        with pytest.raises(flight.FlightUnauthenticatedError, match="no valid credentials"):
            list(c.do_action(flight.Action("status", b""), bearer("guess-guess-guess-guess")))
        with pytest.raises(flight.FlightUnauthenticatedError):
            c.authenticate_basic_token("team-a", "not-the-secret-xyz")
        with pytest.raises(flight.FlightUnauthenticatedError):
            writer, _ = c.do_put(flight.FlightDescriptor.for_path("team-a", "x"), BATCH.schema)
            writer.write_batch(BATCH)
            writer.close()
    assert "refused DO_ACTION from ?: no credentials" in caplog_loguru.text
    assert TEAM_A not in caplog_loguru.text and "not-the-secret-xyz" not in caplog_loguru.text
    assert not (data_root / "team-a").exists()


def test_bearer_and_basic_login_with_rights_per_dataset_and_action(data_root, principals, caplog_loguru):
    with running(data_root, auth={"principals_file": str(principals)}) as svc, flight.connect(svc.location) as c:
        options = bearer(TEAM_A_TOKEN)
        writer, reader = c.do_put(flight.FlightDescriptor.for_path("team-a", "spans"), BATCH.schema, options)
        writer.write_batch(BATCH)
        assert reader.read() is not None
        writer.close()
        with pytest.raises(flight.FlightUnauthorizedError, match="principal 'team-a' may not write dataset 'team-b/x'"):
            writer, reader = c.do_put(flight.FlightDescriptor.for_path("team-b", "x"), BATCH.schema, options)
            writer.write_batch(BATCH)
            writer.close()
        assert json_of(c.do_action(flight.Action("status", b""), options))["received_seq"] == 1
        with pytest.raises(flight.FlightUnauthorizedError, match="may not call action 'flush'"):
            list(c.do_action(flight.Action("flush", b""), options))
        # Basic login (what ADBC's username/password do) gives a session token for the next calls
        header = c.authenticate_basic_token("admin", ADMIN)
        session = flight.FlightCallOptions(headers=[header])
        assert json_of(c.do_action(flight.Action("flush", b""), session))["durable_through"] == 1
    assert read_dataset(data_root, "team-a/spans").num_rows == 10
    assert "refused principal 'team-a' may not write dataset 'team-b/x'" in caplog_loguru.text
    assert not (data_root / "team-b").exists()


def test_streams_per_principal_are_limited_without_limiting_the_others(data_root, principals):
    text = principals.read_text().replace('actions = ["status", "ack"]', 'actions = ["status", "ack"]\nmax_streams = 1')
    principals.write_text(text)
    descriptor = flight.FlightDescriptor.for_path("team-a", "s")
    team_a = [(b"authorization", f"Bearer {TEAM_A_TOKEN}".encode())]
    admin = [(b"authorization", f"Bearer {ADMIN_TOKEN}".encode())]
    with running(data_root, auth={"principals_file": str(principals)}) as svc, flight.connect(svc.location) as c:
        writer, reader = c.do_put(descriptor, BATCH.schema, flight.FlightCallOptions(headers=team_a))
        writer.write_batch(BATCH)
        assert reader.read() is not None  # one stream open and served
        with pytest.raises(flight.FlightUnavailableError, match="principal 'team-a' has 1 streams open"):
            send(c, descriptor, BATCH, headers=team_a)
        send(c, flight.FlightDescriptor.for_path("admin-data"), BATCH, headers=admin)  # others go on
        writer.close()
        send(c, descriptor, BATCH, headers=team_a)  # room again
        list(c.do_action(flight.Action("flush", b""), flight.FlightCallOptions(headers=admin)))
    assert read_dataset(data_root, "team-a/s").num_rows == 20
    assert read_dataset(data_root, "admin-data").num_rows == 10


def test_adbc_logs_in_with_username_and_password_over_tls(data_root, principals, pki):  # noqa: F811
    import adbc_driver_flightsql.dbapi as flightsql

    settings = {"server": tls_server(pki), "auth": {"principals_file": str(principals)}}
    with running(data_root, **settings) as svc:

        def connect(user: str, secret: str):
            options = {
                "username": user,
                "password": secret,
                "adbc.flight.sql.client_option.tls_root_certs": pki["ca"].decode(),
            }
            return flightsql.connect(svc.location, db_kwargs=options, autocommit=True)

        with connect("team-a", TEAM_A) as conn, conn.cursor() as cur:
            assert cur.adbc_ingest("spans", pa.table({"a": [1, 2]}), mode="create", db_schema_name="team-a") == 2
            with pytest.raises(Exception, match="may not replace data"):
                cur.adbc_ingest("spans", pa.table({"a": [3]}), mode="replace", db_schema_name="team-a")
            empty = pa.table({"a": pa.array([], pa.int64())})  # a replace with no rows would delete it all
            with pytest.raises(Exception):  # noqa: B017 - the Go driver words it "Stream finished before ..."
                cur.adbc_ingest("spans", empty, mode="replace", db_schema_name="team-a")
            assert read_dataset(data_root, "team-a/spans").column("a").to_pylist() == [1, 2]
        with (  # a new cursor: ADBC keeps a cursor's db_schema_name from its last ingest
            connect("team-a", TEAM_A) as conn,
            conn.cursor() as cur,
            pytest.raises(Exception, match="may not write dataset 'logs'"),
        ):
            cur.adbc_ingest("logs", pa.table({"a": [3]}), mode="create")
        with connect("admin", ADMIN) as conn, conn.cursor() as cur:
            assert cur.adbc_ingest("spans", pa.table({"a": [9]}), mode="replace", db_schema_name="team-a") == 1
        with (
            pytest.raises(Exception, match=r"(?i)unauthenticated|wrong username or password"),
            connect("team-a", "nope") as conn,
            conn.cursor() as cur,
        ):
            cur.adbc_ingest("spans", pa.table({"a": [1]}), mode="append", db_schema_name="team-a")
    assert read_dataset(data_root, "team-a/spans").column("a").to_pylist() == [9]


def test_without_a_principals_file_everything_stays_open(data_root):
    with running(data_root) as svc, flight.connect(svc.location) as c:
        put(c, "anyone", [BATCH])
        action(c, "flush")


def test_hash_secret_command():
    done = subprocess.run(
        [sys.executable, "-m", "flight_writer.cli", "hash-secret"],
        input=f"{TEAM_A}\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    from flight_writer.ingest.auth import secret_matches

    assert done.returncode == 0 and secret_matches(TEAM_A, done.stdout.strip()) and TEAM_A not in done.stdout


def test_a_password_is_no_bearer_token_and_a_token_logs_in_only_as_its_own_principal(data_root, principals):
    """Bearer takes machine tokens (and sessions) only: checking a bearer value against every scrypt hash
    made each refusal cost ~50 ms per principal. A token may also be a Basic password, for its own name."""
    with running(data_root, auth={"principals_file": str(principals)}) as svc, flight.connect(svc.location) as c:
        with pytest.raises(flight.FlightUnauthenticatedError, match="no valid credentials"):
            list(c.do_action(flight.Action("status", b""), bearer(TEAM_A)))
        header = c.authenticate_basic_token("team-a", TEAM_A_TOKEN)
        assert json_of(c.do_action(flight.Action("status", b""), flight.FlightCallOptions(headers=[header])))
        with pytest.raises(flight.FlightUnauthenticatedError):
            c.authenticate_basic_token("admin", TEAM_A_TOKEN)
        tampered = TEAM_A_TOKEN[:-2] + ("AA" if not TEAM_A_TOKEN.endswith("AA") else "BB")
        with pytest.raises(flight.FlightUnauthenticatedError, match="no valid credentials"):
            list(c.do_action(flight.Action("status", b""), bearer(tampered)))


def test_refusing_a_stranger_runs_no_scrypt_and_unknown_names_cost_what_wrong_passwords_do(principals, monkeypatch):
    auth = Authenticator(load_principals(str(principals)))
    checks: list[str] = []
    real = auth_module.secret_matches

    def counted(secret: str, stored: str) -> bool:
        checks.append(stored)
        return real(secret, stored)

    monkeypatch.setattr(auth_module, "secret_matches", counted)
    assert auth.bearer("guess-guess-guess-guess") is None and auth.bearer("fw_000000000000_" + "x" * 43) is None
    assert auth.bearer(TEAM_A_TOKEN).name == "team-a" and checks == []  # tokens: SHA-256, no scrypt
    assert auth.login("nobody", "wrong-wrong-wrong") is None
    assert auth.login("team-a", "wrong-wrong-wrong") is None
    assert len(checks) == 2  # one scrypt each: the same time for an unknown name as for a wrong password
    principal, session = auth.login("team-a", TEAM_A)
    assert principal.name == "team-a" and auth.bearer(session).name == "team-a"


def test_password_checks_run_in_bounded_slots(principals, monkeypatch):
    auth = Authenticator(load_principals(str(principals)))
    monkeypatch.setattr(auth_module, "LOGIN_WAIT", 0.01)
    taken = [auth._slots.acquire(blocking=False) for _ in range(auth_module.SCRYPT_SLOTS)]
    assert all(taken)
    with pytest.raises(LoginsBusy, match="password checks are running"):
        auth.login("team-a", TEAM_A)
    assert auth.login("team-a", TEAM_A_TOKEN) is not None  # tokens need no slot
    for _ in taken:
        auth._slots.release()
    assert auth.login("team-a", TEAM_A) is not None


def test_a_removed_token_is_refused_at_once_after_a_reload(principals):
    auth = Authenticator(load_principals(str(principals)))
    assert auth.bearer(TEAM_A_TOKEN) is not None
    principals.write_text(principals.read_text().replace(f', "{TEAM_A_TOKEN_HASH}"', ""))
    auth.reload(load_principals(str(principals)))
    assert auth.bearer(TEAM_A_TOKEN) is None


def test_one_token_id_for_two_principals_is_refused(tmp_path):
    _, stored = new_token()
    path = tmp_path / "p.toml"
    path.write_text(f'[principals.a]\nsecret = "{stored}"\n[principals.b]\nsecret = "{stored}"\n')
    with pytest.raises(auth_module.AuthError, match="listed for both 'a' and 'b'"):
        load_principals(str(path))


def test_refusals_are_counted_by_reason_and_logged_in_summaries(caplog_loguru):
    quiet = Refusals(every=3600)
    for _ in range(500):
        quiet.count("unauthenticated", "DO_ACTION from ?: no credentials")
    quiet.count("queue_full", "queue full")
    assert quiet.totals() == {"unauthenticated": 500, "queue_full": 1}
    assert caplog_loguru.text.count("refused ") == 1  # the first; the rest only counted
    chatty = Refusals(every=0)
    chatty.count("limits", "too many streams")
    assert caplog_loguru.text.count("refused ") == 2


def test_new_token_command():
    done = subprocess.run(
        [sys.executable, "-m", "flight_writer.cli", "new-token"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    token = done.stdout.split("token: ")[1].split()[0]
    stored = done.stdout.split('hash:  "')[1].split('"')[0]
    assert done.returncode == 0 and token.startswith("fw_") and stored.startswith("sha256$" + token[3:15] + "$")


def one_put(client: flight.FlightClient, dataset: str, options: flight.FlightCallOptions) -> dict:
    writer, reader = client.do_put(flight.FlightDescriptor.for_path(*dataset.split("/")), BATCH.schema, options)
    writer.write_batch(BATCH)
    reply = json.loads(reader.read().to_pybytes())
    writer.close()
    return reply


def json_of(results) -> dict:
    [result] = list(results)
    return json.loads(result.body.to_pybytes())


def test_check_takes_the_command_line_credentials(data_root, principals):
    """The container's Flight-side health check works with auth on."""
    with running(data_root, auth={"principals_file": str(principals)}) as svc:
        command = [sys.executable, "-m", "flight_writer.cli", "check", "--location", svc.location]

        def check(**env: str) -> subprocess.CompletedProcess:
            clean = {k: v for k, v in os.environ.items() if not k.startswith("FLIGHT_WRITER_")}
            return subprocess.run(command, env={**clean, **env}, capture_output=True, text=True, cwd=REPO, timeout=60)

        refused = check()
        assert refused.returncode == 1 and "no credentials" in refused.stderr and "Traceback" not in refused.stderr
        assert check(FLIGHT_WRITER_TOKEN=TEAM_A_TOKEN).returncode == 0
        assert check(FLIGHT_WRITER_USER="admin", FLIGHT_WRITER_PASSWORD=ADMIN).returncode == 0


def test_a_principal_sees_only_its_own_datasets_files_and_flushes(data_root, principals):
    team_a, admin = bearer(TEAM_A_TOKEN), bearer(ADMIN_TOKEN)
    with running(data_root, auth={"principals_file": str(principals)}) as svc, flight.connect(svc.location) as c:
        mine, theirs = (
            one_put(c, dataset, options) for dataset, options in (("team-a/spans", team_a), ("admin/x", admin))
        )
        assert json_of(c.do_action(flight.Action("flush", b""), admin))["durable_through"] == 2  # admin: everything
        seen = json_of(c.do_action(flight.Action("status", b""), team_a))
        assert set(seen["datasets"]) == {"team-a/spans"}
        assert set(json_of(c.do_action(flight.Action("status", b""), admin))["datasets"]) == {
            "team-a/spans",
            "admin/x",
        }
        body = json.dumps({"seqs": [mine["seq"], theirs["seq"]]}).encode()
        acks = json_of(c.do_action(flight.Action("ack", body), team_a))["acks"]
        assert acks[0]["state"] == acks[1]["state"] == "durable"
        assert acks[0]["file"].startswith("team-a/spans/") and "file" not in acks[1]
        assert "admin/" not in json.dumps(acks)
    text = principals.read_text().replace('actions = ["status", "ack"]', 'actions = ["status", "ack", "flush"]', 1)
    principals.write_text(text)
    with running(data_root, auth={"principals_file": str(principals)}) as svc, flight.connect(svc.location) as c:
        with pytest.raises(flight.FlightUnauthorizedError, match="may not flush every dataset"):
            list(c.do_action(flight.Action("flush", b""), team_a))
        with pytest.raises(flight.FlightUnauthorizedError, match="may not flush dataset 'admin/x'"):
            list(c.do_action(flight.Action("flush", b'{"dataset": "admin/x"}'), team_a))
        assert json_of(c.do_action(flight.Action("flush", b'{"dataset": "team-a/spans"}'), team_a))


def test_logins_cannot_push_out_other_principals_sessions(principals, monkeypatch):
    """A token login makes no session (the token is its own bearer value); a principal keeps only its newest
    password sessions, so one principal's logins cannot evict another's."""
    auth = Authenticator(load_principals(str(principals)))
    _, admin_session = auth.login("admin", ADMIN)
    for _ in range(5000):  # as fast as a dict: no scrypt for tokens
        assert auth.login("team-a", TEAM_A_TOKEN) == (auth.bearer(TEAM_A_TOKEN), TEAM_A_TOKEN)
    monkeypatch.setattr(auth_module, "SESSIONS_PER_PRINCIPAL", 2)
    first = auth.login("team-a", TEAM_A)[1]
    for _ in range(2):
        auth.login("team-a", TEAM_A)
    assert auth.bearer(first) is None  # team-a's oldest went
    assert auth.bearer(admin_session).name == "admin"  # admin's stayed


def test_every_password_login_runs_as_many_scrypt_checks_and_fw_passwords_work(tmp_path, monkeypatch):
    """During a rotation a principal has two hashes: a wrong password for it, for another principal and for
    an unknown name all run the same checks. A password that only looks like a token still logs in."""
    path = tmp_path / "p.toml"
    password = "fw_not-a-token-but-a-password"
    path.write_text(
        f'[principals.rotating]\nsecret = ["{hash_secret(TEAM_A)}", "{hash_secret(ADMIN)}"]\n'
        f'[principals.plain]\nsecret = "{hash_secret(password)}"\n'
    )
    auth = Authenticator(load_principals(str(path)))
    checks: list[str] = []
    real = auth_module.secret_matches
    monkeypatch.setattr(auth_module, "secret_matches", lambda s, h: checks.append(h) or real(s, h))
    counts = []
    for name in ("rotating", "plain", "nobody"):
        checks.clear()
        assert auth.login(name, "wrong-wrong-wrong-wrong") is None
        counts.append(len(checks))
    assert counts == [2, 2, 2]
    assert auth.login("plain", password)[0].name == "plain" and auth.login("rotating", ADMIN)[0].name == "rotating"
