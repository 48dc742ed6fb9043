"""Personal data: customer ids pseudonymised with a keyed hash, contact details masked.

Staging (dbt) replaces every customer id by ``HMAC-SHA256(key, id)`` (hex, first 32
characters) and masks e-mail addresses and phone numbers in free text (survey comments)
before anything downstream reads them (``macros/personal_data.sql``). The marts, which the
``analyst`` role reads, carry only the pseudonyms; raw and quarantine keep the records as the
source sent them, and only the pipeline's role reads those.

The key comes from ``SERVICELOOP_PSEUDONYM_KEY`` (a deployment sets it from its secrets
store). Without it, the warehouse keeps the key it has; a warehouse without one gets the key
of the state folder, generated on first use into ``<home>/warehouse/pseudonym.key`` (0600),
like the warehouse password. The key is installed in ``ops.pseudonym_key`` as HMAC's inner
and outer padded keys, so dbt computes the HMAC in SQL (``sha256`` of PostgreSQL 11+, no
extension) and the key never appears in a compiled model, a query log or a dbt log.

The same key always gives the same pseudonym, so reruns and backfills give identical marts.
Changing the key changes every pseudonym: rebuild with ``serviceloop dbt build
--full-refresh`` afterwards, or unchanged rows keep their old pseudonyms.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from pathlib import Path

from serviceloop.settings import paths

log = logging.getLogger(__name__)

KEY_ENV = "SERVICELOOP_PSEUDONYM_KEY"
BLOCK = 64  # SHA-256's block size, which HMAC pads the key to

DDL = """
create table if not exists ops.pseudonym_key (
    id boolean primary key default true check (id),
    inner_pad bytea not null,
    outer_pad bytea not null,
    fingerprint text not null,
    installed_at timestamptz not null default now()
);
"""


def key_file() -> Path:
    return paths().home / "warehouse" / "pseudonym.key"


def state_key() -> bytes:
    """The state folder's key, generated (0600) the first time."""
    path = key_file()
    if path.exists():
        return path.read_text().strip().encode()
    key = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    return key.encode()


def pads(key: bytes) -> tuple[bytes, bytes]:
    """HMAC's inner and outer padded keys (RFC 2104)."""
    if len(key) > BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(BLOCK, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def fingerprint(key: bytes) -> str:
    """Tells keys apart without revealing them."""
    return hashlib.sha256(b"serviceloop pseudonym key\0" + key).hexdigest()[:16]


def ensure_key(cur) -> None:
    """Install the key in ``ops.pseudonym_key`` (created by ``schema.ensure``) when it is missing
    or the environment names another."""
    env = os.environ.get(KEY_ENV)
    cur.execute("select fingerprint from ops.pseudonym_key")
    row = cur.fetchone()
    if row is not None and not env:
        return
    key = env.encode() if env else state_key()
    fp = fingerprint(key)
    if row is not None and row[0] == fp:
        return
    if row is not None:
        log.warning(
            "the pseudonymisation key changed (%s -> %s): every customer pseudonym changes;"
            " rebuild the models with `serviceloop dbt build --full-refresh`",
            row[0], fp,
        )  # fmt: skip
    inner, outer = pads(key)
    cur.execute(
        """
        insert into ops.pseudonym_key (id, inner_pad, outer_pad, fingerprint) values (true, %s, %s, %s)
        on conflict (id) do update set inner_pad = excluded.inner_pad, outer_pad = excluded.outer_pad,
            fingerprint = excluded.fingerprint, installed_at = now()
        where %s
        """,
        (inner, outer, fp, bool(env)),
    )


def pseudonym(key: bytes, value: str) -> str:
    """What staging makes of ``value`` (for tests and for looking a customer up on purpose)."""
    import hmac

    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:32]
