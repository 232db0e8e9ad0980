"""A/B arm assignment: deterministic, salted, stateless.

A user's arm is a pure function of ``(salt, user_key)``, so every worker, every restart and the
offline evaluation agree without sharing state; a new salt starts a fresh, independent split.
``control`` is shown the base price, ``uniform`` one learnt price per item (the same for every
user), ``treatment`` the personalized price.

The user's bucket ``x`` in ``[0, 1)`` picks the arm from consecutive intervals::

    treatment: x < t        uniform: t <= x < t + u        control: t + u <= x

with ``t`` the treatment share and ``u`` the uniform share. With ``u = 0`` this is the two-arm
split of before, so an old salt keeps its split. Users only ever move one way along
control -> uniform -> treatment when a share is raised: raising ``u`` moves control users into
uniform; raising ``t`` (``u`` fixed) moves uniform users into treatment and control users into
uniform. Lowering a share moves them back the other way. No user jumps over an arm.

>>> assign_arm("u-1", "exp-1", 0.5) == assign_arm("u-1", "exp-1", 0.5)
True
>>> assign_arm("u-1", "exp-1", 0.0), assign_arm("u-1", "exp-1", 1.0), assign_arm("u-1", "exp-1", 0.0, 1.0)
('control', 'treatment', 'uniform')
"""

from __future__ import annotations

import hashlib
from typing import Literal

Arm = Literal["control", "uniform", "treatment"]
ARMS: tuple[Arm, Arm, Arm] = ("control", "uniform", "treatment")


def bucket(user_key: str, salt: str) -> float:
    """Uniform number in ``[0, 1)`` from the first 64 bits of ``blake2b(salt, user_key)``.

    The salt is length-prefixed so that ``("ab", "c")`` and ``("a", "bc")`` hash apart.
    """
    s = salt.encode()
    digest = hashlib.blake2b(len(s).to_bytes(4, "big") + s + user_key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def assign_arm(user_key: str, salt: str, treatment_share: float, uniform_share: float = 0.0) -> Arm:
    """``treatment`` for a ``treatment_share`` fraction of users, ``uniform`` for a ``uniform_share``
    fraction, ``control`` for the rest (see the module docstring for the intervals).

    Pass the pseudonymous user key (``UserHasher.hash``), never the raw id. Buckets are fixed per
    salt, so raising a share only moves users along control -> uniform -> treatment, never back.
    """
    if not 0.0 <= treatment_share <= 1.0:
        raise ValueError(f"treatment_share must be in [0, 1], got {treatment_share!r}")
    if not 0.0 <= uniform_share <= 1.0 or treatment_share + uniform_share > 1.0 + 1e-9:
        raise ValueError(f"uniform_share must be in [0, 1 - treatment_share], got {uniform_share!r} "
                         f"with treatment_share {treatment_share!r}")
    x = bucket(user_key, salt)
    if x < treatment_share:
        return "treatment"
    return "uniform" if x < treatment_share + uniform_share else "control"
