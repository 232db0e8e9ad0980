"""A/B arm assignment: deterministic, salted, stateless.

A user's arm is a pure function of ``(salt, user_key)``, so every worker, every restart and the
offline evaluation agree without sharing state; a new salt starts a fresh, independent split.
``control`` is shown the base price, ``treatment`` the personalized price.

>>> assign_arm("u-1", "exp-1", 0.5) == assign_arm("u-1", "exp-1", 0.5)
True
>>> assign_arm("u-1", "exp-1", 0.0), assign_arm("u-1", "exp-1", 1.0)
('control', 'treatment')
"""

from __future__ import annotations

import hashlib
from typing import Literal

Arm = Literal["control", "treatment"]
ARMS: tuple[Arm, Arm] = ("control", "treatment")


def bucket(user_key: str, salt: str) -> float:
    """Uniform number in ``[0, 1)`` from the first 64 bits of ``blake2b(salt, user_key)``.

    The salt is length-prefixed so that ``("ab", "c")`` and ``("a", "bc")`` hash apart.
    """
    s = salt.encode()
    digest = hashlib.blake2b(len(s).to_bytes(4, "big") + s + user_key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def assign_arm(user_key: str, salt: str, treatment_share: float) -> Arm:
    """``treatment`` for a ``treatment_share`` fraction of users, ``control`` for the rest.

    Pass the pseudonymous user key (``UserHasher.hash``), never the raw id. Raising the share
    only moves control users into treatment, never back (buckets are fixed per salt).
    """
    if not 0.0 <= treatment_share <= 1.0:
        raise ValueError(f"treatment_share must be in [0, 1], got {treatment_share!r}")
    return "treatment" if bucket(user_key, salt) < treatment_share else "control"
