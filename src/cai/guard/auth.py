"""API keys of the guard server: stored salted and hashed, checked in constant time.

A key file is JSON Lines, one key per line::

    {"id": "alice", "salt": "9f1c...", "sha256": "4be2...", "policy": "default"}

``sha256`` is ``sha256(salt_bytes + key_utf8)`` in hex; the key itself is never stored. ``policy`` (optional) is the
policy a caller with this key gets when a request names none. ``cai guard keys add`` appends a line and prints the
new key once. A key may also come from an environment variable (id ``env``); it is hashed in memory at startup.

Only key ids ever reach logs, the audit log and metrics.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cai.errors import ConfigError, UserInputError

KEY_PREFIX = "cai-"
_ID_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


@dataclass(frozen=True)
class KeyRecord:
    """One stored key: its public id, salt and salted hash, and the caller's default policy."""

    id: str
    salt: str
    sha256: str
    policy: str | None = None

    def matches(self, key: str) -> bool:
        digest = hash_key(key, self.salt)
        return hmac.compare_digest(digest, self.sha256)

    def as_json(self) -> str:
        d = {"id": self.id, "salt": self.salt, "sha256": self.sha256}
        if self.policy:
            d["policy"] = self.policy
        return json.dumps(d, sort_keys=True)


def hash_key(key: str, salt_hex: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt_hex) + key.encode("utf-8")).hexdigest()


def new_record(key_id: str, key: str, policy: str | None = None) -> KeyRecord:
    if not _ID_RE.match(key_id):
        raise UserInputError(
            f"Key id '{key_id}' is not allowed.", fix="use 1-64 letters, digits, '_', '-' or '.' (for example alice)"
        )
    salt = secrets.token_hex(16)
    return KeyRecord(id=key_id, salt=salt, sha256=hash_key(key, salt), policy=policy)


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(24)


def read_key_file(path: str | Path) -> list[KeyRecord]:
    """Every record of a key file; a bad line is an error naming the file and line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"API key file '{p}' does not exist.", fix=f"create it with: cai guard keys add --file {p} --id NAME")
    out: list[KeyRecord] = []
    seen: set[str] = set()
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{p}:{n}"
        try:
            d = json.loads(line)
        except ValueError as e:
            raise ConfigError(f"{where}: not a JSON object ({e.msg}).", fix="each line holds one key record written by `cai guard keys add`") from None
        if not isinstance(d, dict) or not {"id", "salt", "sha256"} <= set(d) or set(d) - {"id", "salt", "sha256", "policy"}:
            raise ConfigError(f"{where}: a key record needs the fields id, salt, sha256 (and optionally policy).",
                              fix="regenerate the line with `cai guard keys add`")
        if not re.fullmatch(r"[0-9a-f]{64}", str(d["sha256"])) or not re.fullmatch(r"(?:[0-9a-f]{2}){8,64}", str(d["salt"])):
            raise ConfigError(f"{where}: field sha256 must be 64 hex digits and salt an even number of hex digits "
                              "(a plain key must never be stored).", fix="regenerate the line with `cai guard keys add`")
        if d["id"] in seen:
            raise ConfigError(f"{where}: key id '{d['id']}' appears twice.", fix="give every key its own id")
        seen.add(d["id"])
        out.append(KeyRecord(id=str(d["id"]), salt=d["salt"], sha256=d["sha256"], policy=d.get("policy") or None))
    return out


def append_key(path: str | Path, record: KeyRecord) -> None:
    """Append ``record`` to the key file (created with mode 0600)."""
    p = Path(path)
    existing = read_key_file(p) if p.exists() else []
    if any(r.id == record.id for r in existing):
        raise UserInputError(f"Key id '{record.id}' is already in {p}.", fix="choose another --id, or remove the old line first")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(record.as_json() + "\n")


class KeyStore:
    """The keys a server accepts. ``lookup(key)`` returns the matching record or None."""

    def __init__(self, records: list[KeyRecord]):
        self.records = list(records)

    @classmethod
    def load(cls, key_file: str | Path | None = None, env_var: str | None = None) -> "KeyStore":
        records = read_key_file(key_file) if key_file else []
        if env_var and os.environ.get(env_var):
            if any(r.id == "env" for r in records):
                raise ConfigError(f"Key id 'env' in {key_file} clashes with the key from ${env_var}.", fix="rename that key")
            records.append(new_record("env", os.environ[env_var]))
        return cls(records)

    def __len__(self) -> int:
        return len(self.records)

    def lookup(self, key: str | None) -> KeyRecord | None:
        if not key:
            return None
        found = None
        for r in self.records:  # check every record, so the time taken does not say which one matched
            if r.matches(key):
                found = r
        return found


def bearer_key(authorization: str | None) -> str | None:
    """The key of an ``Authorization: Bearer KEY`` header (None when absent or malformed)."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
