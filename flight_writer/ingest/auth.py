"""Authentication and rights: who may write which datasets, call which actions, replace data.

Principals come from ``auth.principals_file``, a TOML file; without one, every call is anonymous and may do
everything (as before). With one, every call needs credentials:

    [principals.team-a]
    secret = ["sha256$3f9c0a1b2c4d$...",  # a machine token's hash: flight-writer new-token
              "scrypt$..."]              # a human password's hash: flight-writer hash-secret < secret.txt
    datasets = ["team-a/*"]         # glob patterns of the datasets it may write (* matches / too)
    actions = ["ack", "status"]     # the actions it may call (CloseSession always)
    replace = false                 # Flight SQL ingest with mode "replace" (deletes a dataset's data)
    max_streams = 20                # do_put streams open at once (default server.max_streams_per_principal)

Two kinds of credentials, stored as hashes, never as themselves:

- Machine tokens, ``fw_<id>_<secret>`` (``flight-writer new-token``): an id part to look the token up in
  O(1) and 256 random bits, stored as SHA-256 (random secrets need no slow hash). Sent as
  ``authorization: Bearer fw_...``, or as the password of a Basic login. A refusal costs a dict lookup and
  one SHA-256: microseconds, whatever the number of principals.
- Human passwords (``flight-writer hash-secret``): salted scrypt, for Flight's Basic handshake only
  (``authorization: Basic base64(name:secret)``, what ADBC's ``username``/``password`` send), which answers
  with a session token (``authorization: Bearer ...``) for the calls after it. At most ``SCRYPT_SLOTS``
  scrypt checks run at once (each takes ~50 ms and 16 MiB); an unknown name is checked against a dummy hash,
  so it takes as long as a wrong password. A bearer value that is neither a session nor a token is refused
  without any hashing.

A call without valid credentials gets ``FlightUnauthenticatedError``; a right it lacks
``FlightUnauthorizedError`` naming the right. Refusals are counted by reason (refusals.py) and logged in
rate-limited summaries, never with a secret.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import os
import re
import secrets
import threading
import tomllib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import pyarrow.flight as flight

from flight_writer.ingest.refusals import Refusals

SCRYPT = {"n": 1 << 14, "r": 8, "p": 1, "dklen": 32}
SCRYPT_SLOTS = 2  # scrypt checks at once: CPU and memory (16 MiB each) a flood of Basic logins can take
LOGIN_WAIT = 5.0  # seconds a Basic login waits for a slot before it is told to retry
REMEMBERED = 4096  # session tokens kept
SESSIONS_PER_PRINCIPAL = 64  # a principal's newest sessions kept: one cannot push out the others'
TOKEN_PREFIX = "fw_"
_TOKEN = re.compile(r"fw_([0-9a-f]{12})_([A-Za-z0-9_-]{20,})")
_SHA256 = re.compile(r"sha256\$([0-9a-f]{12})\$([0-9a-f]{64})")
_DUMMY_SCRYPT = "scrypt$" + "00" * 16 + "$" + "00" * 32  # checked for unknown names: the same time


def hash_secret(secret: str) -> str:
    """A human password's stored form: salted scrypt."""
    salt = os.urandom(16)
    return f"scrypt${salt.hex()}${hashlib.scrypt(secret.encode(), salt=salt, **SCRYPT).hex()}"


def new_token() -> tuple[str, str]:
    """A machine token and its stored form: ``("fw_<id>_<secret>", "sha256$<id>$<hex digest>")``."""
    token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    return f"{TOKEN_PREFIX}{token_id}_{secret}", f"sha256${token_id}${_sha256(secret).hex()}"


def secret_matches(secret: str, stored: str) -> bool:
    """Whether a password matches a stored scrypt hash (False for other kinds)."""
    kind, salt, digest = stored.split("$")
    if kind != "scrypt":
        return False
    computed = hashlib.scrypt(secret.encode(), salt=bytes.fromhex(salt), **SCRYPT)
    return hmac.compare_digest(computed, bytes.fromhex(digest))


def _sha256(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _valid_hash(stored: object) -> bool:
    if not isinstance(stored, str):
        return False
    if _SHA256.fullmatch(stored):
        return True
    kind, _, rest = stored.partition("$")
    salt, _, digest = rest.partition("$")
    try:
        return kind == "scrypt" and bool(bytes.fromhex(salt)) and bool(bytes.fromhex(digest))
    except ValueError:
        return False


@dataclass(frozen=True)
class Principal:
    name: str
    secret_hashes: tuple[str, ...]  # any of them logs in: two while a secret is rotated
    datasets: tuple[str, ...]
    actions: frozenset[str]
    replace: bool
    max_streams: int | None = None  # do_put streams open at once; None: server.max_streams_per_principal

    def may_write(self, dataset: str) -> bool:
        return any(fnmatch.fnmatchcase(dataset, pattern) for pattern in self.datasets)


class AuthError(ValueError):
    """The principals file cannot be used (its message names the problem)."""


def load_principals(path: str) -> dict[str, Principal]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AuthError(f"auth.principals_file {path!r}: {exc}") from None
    table = data.get("principals")
    if not isinstance(table, dict) or not table:
        raise AuthError(f"auth.principals_file {path!r} has no [principals.<name>] tables")
    principals = {}
    for name, p in table.items():
        where = f"auth.principals_file {path!r}, principal {name!r}"
        hashes = p.get("secret") if isinstance(p, dict) else None
        hashes = [hashes] if isinstance(hashes, str) else hashes
        if not isinstance(hashes, list) or not hashes or not all(_valid_hash(h) for h in hashes):
            raise AuthError(
                f"{where}: secret must be a hash from `flight-writer new-token` (sha256$...) or "
                "`flight-writer hash-secret` (scrypt$...), or a list of them"
            )
        lists = {key: p.get(key, []) for key in ("datasets", "actions")}
        if not all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in lists.values()):
            raise AuthError(f"{where}: datasets and actions must be lists of strings")
        if not isinstance(p.get("replace", False), bool):
            raise AuthError(f"{where}: replace must be true or false")
        streams = p.get("max_streams")
        if streams is not None and (type(streams) is not int or streams < 1):
            raise AuthError(f"{where}: max_streams must be a positive integer")
        unknown = set(p) - {"secret", "datasets", "actions", "replace", "max_streams"}
        if unknown:
            raise AuthError(f"{where}: unknown keys {sorted(unknown)}")
        principals[name] = Principal(
            name, tuple(hashes), tuple(lists["datasets"]), frozenset(lists["actions"]), p.get("replace", False), streams
        )
    seen: dict[str, str] = {}
    for principal in principals.values():
        for stored in principal.secret_hashes:
            if (m := _SHA256.fullmatch(stored)) is not None:
                if m.group(1) in seen:
                    raise AuthError(
                        f"auth.principals_file {path!r}: token id {m.group(1)} is listed for both "
                        f"{seen[m.group(1)]!r} and {principal.name!r}; make a new token for one"
                    )
                seen[m.group(1)] = principal.name
    return principals


class LoginsBusy(Exception):
    """Every scrypt slot stayed taken for ``LOGIN_WAIT`` seconds."""


class Authenticator:
    """Checks credentials; remembers the session tokens Basic logins made.

    ``reload(principals)`` swaps the principals in place (SIGHUP): a session counts only while its principal
    still has the hash it logged in with, and gets the principal's rights as they are now. So removing a
    hash ends every session made with it, and a removed token is refused at once."""

    def __init__(self, principals: dict[str, Principal]) -> None:
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(SCRYPT_SLOTS)
        # session token -> (principal name, the hash its secret matched); per principal, its newest sessions
        self._sessions: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._sessions_of: dict[str, OrderedDict[str, None]] = {}
        self.reload(principals)

    def reload(self, principals: dict[str, Principal]) -> None:
        tokens: dict[str, tuple[str, bytes, str]] = {}  # token id -> (principal name, digest, stored hash)
        checks = 1  # scrypt checks per password login: the most scrypt hashes a principal has
        for principal in principals.values():
            for stored in principal.secret_hashes:
                if (m := _SHA256.fullmatch(stored)) is not None:
                    tokens[m.group(1)] = (principal.name, bytes.fromhex(m.group(2)), stored)
            checks = max(checks, sum(h.startswith("scrypt$") for h in principal.secret_hashes))
        self._known = _Known(principals, tokens, checks)  # one attribute: a login reads one consistent set

    def login(self, name: str, secret: str) -> tuple[Principal, str] | None:
        """Basic credentials -> the principal and a bearer value for the next calls, or None. A machine
        token as the password costs no scrypt and makes no session: it is its own bearer value. A password
        makes a session (a principal keeps its newest ``SESSIONS_PER_PRINCIPAL``). LoginsBusy if no scrypt
        slot came free in time."""
        if _TOKEN.fullmatch(secret):
            found = self._token(secret)
            return (found[0], secret) if found is not None and found[0].name == name else None
        matched = self._password(name, secret)
        if matched is None:
            return None
        session = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[session] = (name, matched[1])
            mine = self._sessions_of.setdefault(name, OrderedDict())
            mine[session] = None
            if len(mine) > SESSIONS_PER_PRINCIPAL:  # one principal cannot push out everyone else's
                self._sessions.pop(mine.popitem(last=False)[0], None)
            if len(self._sessions) > REMEMBERED:
                old, (owner, _) = self._sessions.popitem(last=False)
                self._sessions_of.get(owner, {}).pop(old, None)  # type: ignore[call-overload]
        return matched[0], session

    def bearer(self, token: str) -> Principal | None:
        """A session token or a machine token -> its principal, or None. No slow hash either way."""
        with self._lock:
            known = self._sessions.get(token)
        if known is not None:
            principal = self._known.principals.get(known[0])
            return principal if principal is not None and known[1] in principal.secret_hashes else None
        found = self._token(token)
        return found[0] if found is not None else None

    def _token(self, token: str) -> tuple[Principal, str] | None:
        """A machine token's principal and stored hash: one dict lookup and one SHA-256, found or not."""
        known = self._known
        m = _TOKEN.fullmatch(token)
        entry = known.tokens.get(m.group(1)) if m is not None else None
        digest = _sha256(m.group(2) if m is not None else token)
        if entry is None:
            hmac.compare_digest(digest, bytes(32))  # as long as a wrong secret takes
            return None
        name, expected, stored = entry
        principal = known.principals.get(name)
        if not hmac.compare_digest(digest, expected) or principal is None or stored not in principal.secret_hashes:
            return None
        return principal, stored

    def _password(self, name: str, secret: str) -> tuple[Principal, str] | None:
        """The same number of scrypt checks whatever the name (the most any principal needs, padded with a
        dummy hash), every one run, in a slot: a wrong password, an unknown name and a principal with two
        hashes (a rotation) take the same time."""
        known = self._known
        principal = known.principals.get(name)
        hashes = [h for h in principal.secret_hashes if h.startswith("scrypt$")] if principal is not None else []
        hashes += [_DUMMY_SCRYPT] * (known.checks - len(hashes))
        if not self._slots.acquire(timeout=LOGIN_WAIT):
            raise LoginsBusy(f"{SCRYPT_SLOTS} password checks are running; retry in a moment")
        try:
            results = [secret_matches(secret, h) for h in hashes]  # all of them, no early exit
        finally:
            self._slots.release()
        matched = next((h for h, ok in zip(hashes, results, strict=True) if ok and h != _DUMMY_SCRYPT), None)
        if principal is None or matched is None:
            return None
        return principal, matched


@dataclass(frozen=True)
class _Known:
    principals: dict[str, Principal]
    tokens: dict[str, tuple[str, bytes, str]]
    checks: int


class HandshakeAllowed(flight.ServerAuthHandler):
    """Lets the Handshake call through to the middleware, which checks the Basic credentials on it (without
    an auth handler pyarrow answers Handshake with UNIMPLEMENTED); other calls are checked there too."""

    def authenticate(self, outgoing: flight.ServerAuthSender, incoming: flight.ServerAuthReader) -> None:
        pass

    def is_valid(self, token: bytes) -> str:
        return ""


class AuthMiddleware(flight.ServerMiddleware):
    def __init__(self, principal: Principal, refusals: Refusals, session: str | None = None) -> None:
        self.principal = principal
        self.refusals = refusals
        self._session = session

    def sending_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._session}"} if self._session else {}


class AuthMiddlewareFactory(flight.ServerMiddlewareFactory):
    """Every call: credentials from the ``authorization`` header, or ``FlightUnauthenticatedError``."""

    def __init__(self, authenticator: Authenticator, refusals: Refusals) -> None:
        self._auth = authenticator
        self._refusals = refusals

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[str | bytes]]) -> AuthMiddleware:
        values = headers.get("authorization") or []
        value = values[0].decode() if values and isinstance(values[0], bytes) else (values[0] if values else "")
        scheme, _, credentials = value.strip().partition(" ")
        if scheme.lower() == "basic":
            try:
                padded = credentials + "=" * (-len(credentials) % 4)  # ADBC's Go driver sends it unpadded
                name, _, secret = base64.b64decode(padded, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                name, secret = "", ""
            try:
                login = self._auth.login(name, secret)
            except LoginsBusy as exc:
                self._refusals.count("auth_busy", f"{info.method.name}: {exc}")
                raise flight.FlightUnavailableError(str(exc)) from None
            if login is not None:
                return AuthMiddleware(login[0], self._refusals, login[1])
            self._refuse(info, f"principal {name!r}" if name else "?", "wrong username or password")
        if scheme.lower() == "bearer" and (principal := self._auth.bearer(credentials.strip())) is not None:
            return AuthMiddleware(principal, self._refusals)
        self._refuse(info, "?", "no valid credentials" if value else "no credentials")

    def _refuse(self, info: flight.CallInfo, who: str, why: str) -> NoReturn:
        self._refusals.count("unauthenticated", f"{info.method.name} from {who}: {why}")
        raise flight.FlightUnauthenticatedError(
            f"{why}: send 'authorization: Bearer <token>' or log in with Basic username/password"
        )


def authorize(context: flight.ServerCallContext, right: str, allowed: Callable[[Principal], bool]) -> None:
    """Raise ``FlightUnauthorizedError`` naming ``right`` unless the call's principal is ``allowed`` (every
    call is allowed when authentication is off)."""
    middleware = context.get_middleware("auth")
    if middleware is None or allowed(middleware.principal):
        return
    who = middleware.principal
    middleware.refusals.count("unauthorized", f"principal {who.name!r} may not {right}")
    raise flight.FlightUnauthorizedError(f"principal {who.name!r} may not {right}")


def principal_of(context: flight.ServerCallContext) -> Principal | None:
    middleware = context.get_middleware("auth")
    return middleware.principal if middleware is not None else None
