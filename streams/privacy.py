"""Pseudonymous user keys: keyed HMAC-SHA256, so raw user ids never reach topics or tables.

A plain hash of a user id can be reversed by hashing every candidate id; a keyed HMAC cannot
without the key (``PRICING_USER_HASH_KEY``). The hex digest is truncated to 32 characters,
i.e. 128 bits: a collision among even 10^12 users has probability about 1.5e-15, and forging a
key for a chosen user still needs the HMAC key, so nothing security-relevant is lost.

>>> h = UserHasher("secret")
>>> len(h.hash("alice")), h.hash("alice") == h.hash("alice"), "alice" in h.hash("alice")
(32, True, False)
"""

from __future__ import annotations

import hashlib
import hmac

HEX_CHARS = 32  # 128 bits of the 256-bit digest


class UserHasher:
    """Maps a user id to a stable 32-hex-character pseudonym under a secret key.

    Keeps only the keyed HMAC state (no cache of ids), so memory stays constant.
    """

    __slots__ = ("_mac",)

    def __init__(self, key: bytes | str) -> None:
        """Key with ``key`` (e.g. ``settings.user_hash_key.get_secret_value()``); empty keys are refused."""
        raw = key.encode() if isinstance(key, str) else bytes(key)
        if not raw:
            raise ValueError("user hash key must not be empty")
        self._mac = hmac.new(raw, digestmod=hashlib.sha256)

    def hash(self, user_id: str) -> str:
        """The pseudonym of ``user_id``: HMAC-SHA256 hex, first 32 characters."""
        mac = self._mac.copy()  # pre-keyed state: skips re-deriving the key pads per call
        mac.update(user_id.encode())
        return mac.hexdigest()[:HEX_CHARS]

    def __repr__(self) -> str:
        return "UserHasher(key=**********)"
