"""API keys: made by `vars keys create`, each bound to a tenant and to the users it may act
for; only a SHA-256 digest of a key is stored, so a read of Redis reveals none.

A key is 32 random bytes (URL-safe base64, prefixed ``vars-``): with that much entropy a
plain SHA-256 is as good as a slow password hash, and it is fast enough for every request.
Revoking keeps the record (with ``revoked_at``) and drops the digest's index, so the key no
longer authenticates anywhere.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time

import msgspec

from vars_core.store.backend import KVBackend, Op

KEY_PREFIX = "vars-"
# An end user's id as clients send it; "/" is reserved (the store's id is tenant/user).
USER_ID = re.compile(r"^[A-Za-z0-9._@:-]{1,128}$")
TENANT = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class KeyRefused(ValueError):
    """A key that cannot be made or found; the message says why."""


class ApiKey(msgspec.Struct, frozen=True):
    key_id: str
    digest: str  # sha256 hex of the key
    tenant: str
    users: list[str]
    created_at: float
    name: str = ""
    rate_per_s: float | None = None  # None: the gateway's default
    burst: int | None = None
    max_body_bytes: int | None = None
    revoked_at: float | None = None

    def may_act_for(self, user: str) -> bool:
        return self.revoked_at is None and user in self.users

    def store_user_id(self, user: str) -> str:
        """The user's id in the state store: under this key's tenant."""
        return f"{self.tenant}/{user}"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_user(user: str) -> str:
    if not USER_ID.match(user):
        raise KeyRefused(f"invalid user id {user!r}: 1-128 of letters, digits and . _ @ : -")
    return user


class KeyStore:
    """Keys over any KV backend (Redis in the gateway, memory in unit tests)."""

    def __init__(self, backend: KVBackend, namespace: str = "vars") -> None:
        self.backend = backend
        self.records = f"{namespace}:gw:keys"  # hash: key_id -> ApiKey
        self.digests = f"{namespace}:gw:key-digests"  # hash: digest -> key_id (live keys only)

    def create(
        self,
        users: list[str],
        tenant: str = "default",
        name: str = "",
        rate_per_s: float | None = None,
        burst: int | None = None,
        max_body_bytes: int | None = None,
    ) -> tuple[str, ApiKey]:
        """A new key for ``users``: (the key, shown once; its record)."""
        if not users:
            raise KeyRefused("a key needs at least one user")
        for user in users:
            check_user(user)
        if not TENANT.match(tenant):
            raise KeyRefused(f"invalid tenant {tenant!r}: 1-64 of letters, digits and . _ : -")
        if rate_per_s is not None and rate_per_s <= 0:
            raise KeyRefused("rate must be above 0 requests per second")
        if burst is not None and burst < 1:
            raise KeyRefused("burst must be at least 1")
        if max_body_bytes is not None and max_body_bytes < 1024:
            raise KeyRefused("max body must be at least 1024 bytes")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = ApiKey(
            key_id=secrets.token_hex(6),
            digest=digest(key),
            tenant=tenant,
            users=sorted(set(users)),
            created_at=time.time(),
            name=name,
            rate_per_s=rate_per_s,
            burst=burst,
            max_body_bytes=max_body_bytes,
        )
        self.backend.apply(
            [
                Op("hset", self.records, record.key_id, msgspec.msgpack.encode(record)),
                Op("hset", self.digests, record.digest, record.key_id.encode()),
            ]
        )
        return key, record

    def lookup(self, key: str) -> ApiKey | None:
        """The live key's record, or None (unknown or revoked)."""
        key_id = self.backend.hget(self.digests, digest(key))
        if key_id is None:
            return None
        record = self.get(key_id.decode())
        return record if record is not None and record.revoked_at is None else None

    def get(self, key_id: str) -> ApiKey | None:
        data = self.backend.hget(self.records, key_id)
        return None if data is None else msgspec.msgpack.decode(data, type=ApiKey)

    def list(self) -> list[ApiKey]:
        records = [msgspec.msgpack.decode(v, type=ApiKey) for v in self.backend.hgetall(self.records).values()]
        return sorted(records, key=lambda r: r.created_at)

    def revoke(self, key_or_id: str) -> ApiKey:
        """Revoke by key id or by the key itself; revoking twice is harmless."""
        if key_or_id.startswith(KEY_PREFIX):
            found = self.backend.hget(self.digests, digest(key_or_id))
            record = self.get(found.decode()) if found else None
        else:
            record = self.get(key_or_id)
        if record is None:
            raise KeyRefused("no such key")
        if record.revoked_at is None:
            record = msgspec.structs.replace(record, revoked_at=time.time())
        self.backend.apply(
            [
                Op("hset", self.records, record.key_id, msgspec.msgpack.encode(record)),
                Op("hdel", self.digests, record.digest),
            ]
        )
        return record


class KeyCache:
    """Lookups remembered for ``ttl_s`` (a revoked key stops working within that time)."""

    def __init__(self, keys: KeyStore, ttl_s: float = 1.0, clock=time.monotonic) -> None:
        self.keys = keys
        self.ttl_s = ttl_s
        self._clock = clock
        self._seen: dict[str, tuple[float, ApiKey | None]] = {}
        self._lock = threading.Lock()

    def lookup(self, key: str) -> ApiKey | None:
        now = self._clock()
        with self._lock:
            hit = self._seen.get(key)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        record = self.keys.lookup(key)
        with self._lock:
            if len(self._seen) > 10_000:  # bounded: unknown keys must not grow it forever
                self._seen.clear()
            self._seen[key] = (now, record)
        return record


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None
