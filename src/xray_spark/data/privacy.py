"""Identifiers that may join data (patient grouping) but must never be stored or shown in clear."""

from __future__ import annotations

import hashlib

HASH_HEX_CHARS: int = 24  # 96 bits: no collisions at any realistic number of patients


def hash_identifier(value: str, salt: str, prefix: str) -> str:
    """`prefix` + the first 24 hex digits of sha256(salt + NUL + value.strip()).

    The same (value, salt) always gives the same reference; another salt gives unrelated ones, so a salt
    kept secret makes the reference useless for looking a person up. An empty value raises ValueError
    (it would put every record without an identifier into one group); the message never contains `value`."""
    text = value.strip()
    if not text:
        raise ValueError("cannot hash an empty identifier")
    digest = hashlib.sha256((salt + "\x00" + text).encode()).hexdigest()
    return prefix + digest[:HASH_HEX_CHARS]
