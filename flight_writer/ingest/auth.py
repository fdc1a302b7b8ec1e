"""Authentication and rights: who may write which datasets, call which actions, replace data.

Principals come from ``auth.principals_file``, a TOML file; without one, every call is anonymous and may do
everything (as before). With one, every call needs credentials:

    [principals.team-a]
    secret = "scrypt$..."           # flight-writer hash-secret < secret.txt; never the secret itself
                                    # (or a list of hashes: while a secret is rotated, either logs in)
    datasets = ["team-a/*"]         # glob patterns of the datasets it may write (* matches / too)
    actions = ["ack", "status"]     # the actions it may call (CloseSession always)
    replace = false                 # Flight SQL ingest with mode "replace" (deletes a dataset's data)
    max_streams = 20                # do_put streams open at once (default server.max_streams_per_principal)

Credentials: ``authorization: Bearer <secret>`` on any call, or Flight's Basic handshake
(``authorization: Basic base64(name:secret)``, what ADBC's ``username``/``password`` options send), which
answers with a session token (``authorization: Bearer ...``) for the calls after it. Secrets are checked
against salted scrypt hashes; a bearer secret that passed once is remembered by its HMAC (with a key of
this process) so that later calls cost no scrypt. A call without valid credentials gets
``FlightUnauthenticatedError``; a right it lacks ``FlightUnauthorizedError`` naming the right. Each refusal
is logged (the principal and the call, never a secret).
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import os
import secrets
import threading
import tomllib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import pyarrow.flight as flight
from loguru import logger

SCRYPT = {"n": 1 << 14, "r": 8, "p": 1, "dklen": 32}
REMEMBERED = 4096  # bearer secrets (by HMAC) and session tokens kept


def hash_secret(secret: str) -> str:
    salt = os.urandom(16)
    return f"scrypt${salt.hex()}${hashlib.scrypt(secret.encode(), salt=salt, **SCRYPT).hex()}"


def secret_matches(secret: str, stored: str) -> bool:
    kind, salt, digest = stored.split("$")
    computed = hashlib.scrypt(secret.encode(), salt=bytes.fromhex(salt), **SCRYPT)
    return kind == "scrypt" and hmac.compare_digest(computed, bytes.fromhex(digest))


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
        if (
            not isinstance(hashes, list)
            or not hashes
            or not all(isinstance(h, str) and h.count("$") == 2 for h in hashes)
        ):
            raise AuthError(f"{where}: secret must be a hash from `flight-writer hash-secret` (or a list of them)")
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
    return principals


class Authenticator:
    """Checks credentials; remembers session tokens and bearer secrets that passed.

    ``reload(principals)`` swaps the principals in place (SIGHUP): a session or remembered bearer secret
    counts only while its principal still has the secret hash it logged in with, and gets the principal's
    rights as they are now. So removing a secret's hash ends every session made with it."""

    def __init__(self, principals: dict[str, Principal]) -> None:
        self._principals = principals
        self._key = os.urandom(32)
        self._lock = threading.Lock()
        # session token / HMAC of a bearer secret -> (principal name, the hash its secret matched)
        self._sessions: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._bearers: OrderedDict[bytes, tuple[str, str]] = OrderedDict()

    def reload(self, principals: dict[str, Principal]) -> None:
        self._principals = principals

    def login(self, name: str, secret: str) -> tuple[Principal, str] | None:
        """Basic credentials -> the principal and a new session token, or None."""
        principal = self._principals.get(name)
        stored = self._matching(secret, principal) if principal is not None else None
        if principal is None or stored is None:
            return None
        token = secrets.token_urlsafe(32)
        self._remember(self._sessions, token, (name, stored))
        return principal, token

    def bearer(self, token: str) -> Principal | None:
        mac = hmac.new(self._key, token.encode(), hashlib.sha256).digest()
        with self._lock:
            known = self._sessions.get(token) or self._bearers.get(mac)
        if known is not None:
            principal = self._principals.get(known[0])
            if principal is not None and known[1] in principal.secret_hashes:
                return principal
        for principal in self._principals.values():  # scrypt each: only until the secret is remembered
            if (stored := self._matching(token, principal)) is not None:
                self._remember(self._bearers, mac, (principal.name, stored))
                return principal
        return None

    @staticmethod
    def _matching(secret: str, principal: Principal) -> str | None:
        """The principal's stored hash that ``secret`` matches, or None."""
        return next((h for h in principal.secret_hashes if secret_matches(secret, h)), None)

    def _remember(self, table: OrderedDict, key: object, value: tuple[str, str]) -> None:
        with self._lock:
            table[key] = value
            if len(table) > REMEMBERED:
                table.popitem(last=False)


class HandshakeAllowed(flight.ServerAuthHandler):
    """Lets the Handshake call through to the middleware, which checks the Basic credentials on it (without
    an auth handler pyarrow answers Handshake with UNIMPLEMENTED); other calls are checked there too."""

    def authenticate(self, outgoing: flight.ServerAuthSender, incoming: flight.ServerAuthReader) -> None:
        pass

    def is_valid(self, token: bytes) -> str:
        return ""


class AuthMiddleware(flight.ServerMiddleware):
    def __init__(self, principal: Principal, session: str | None = None) -> None:
        self.principal = principal
        self._session = session

    def sending_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._session}"} if self._session else {}


class AuthMiddlewareFactory(flight.ServerMiddlewareFactory):
    """Every call: credentials from the ``authorization`` header, or ``FlightUnauthenticatedError``."""

    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator

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
            if (login := self._auth.login(name, secret)) is not None:
                return AuthMiddleware(*login)
            refuse(info, f"principal {name!r}" if name else "?", "wrong username or password")
        if scheme.lower() == "bearer" and (principal := self._auth.bearer(credentials.strip())) is not None:
            return AuthMiddleware(principal)
        refuse(info, "?", "no valid credentials" if value else "no credentials")


def refuse(info: flight.CallInfo, who: str, why: str) -> NoReturn:
    logger.warning("refused {} from {}: {}", info.method.name, who, why)
    raise flight.FlightUnauthenticatedError(
        f"{why}: send 'authorization: Bearer <secret>' or log in with Basic username/password"
    )


def authorize(context: flight.ServerCallContext, right: str, allowed: Callable[[Principal], bool]) -> None:
    """Raise ``FlightUnauthorizedError`` naming ``right`` unless the call's principal is ``allowed`` (every
    call is allowed when authentication is off)."""
    who = principal_of(context)
    if who is None or allowed(who):
        return
    logger.warning("refused: principal {!r} may not {}", who.name, right)
    raise flight.FlightUnauthorizedError(f"principal {who.name!r} may not {right}")


def principal_of(context: flight.ServerCallContext) -> Principal | None:
    middleware = context.get_middleware("auth")
    return middleware.principal if middleware is not None else None
