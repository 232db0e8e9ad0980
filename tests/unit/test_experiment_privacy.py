"""A/B arm assignment and user pseudonyms."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.experiment import assign_arm, bucket
from streams.privacy import UserHasher

USERS = [f"user-{i}" for i in range(100_000)]


def test_assignment_is_deterministic() -> None:
    first = [assign_arm(u, "exp-1", 0.5) for u in USERS[:2000]]
    assert first == [assign_arm(u, "exp-1", 0.5) for u in USERS[:2000]]


@pytest.mark.parametrize("share", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_treatment_share_over_100k_users(share: float) -> None:
    got = sum(assign_arm(u, "exp-1", share) == "treatment" for u in USERS) / len(USERS)
    assert abs(got - share) < 4 * (share * (1 - share) / len(USERS)) ** 0.5 + 1e-12  # 4 sigma


def test_salt_changes_assignment_independently() -> None:
    a = [assign_arm(u, "exp-1", 0.5) for u in USERS[:20_000]]
    b = [assign_arm(u, "exp-2", 0.5) for u in USERS[:20_000]]
    agree = sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
    assert abs(agree - 0.5) < 0.02  # independent splits agree half the time


def test_salt_boundary_is_unambiguous() -> None:
    assert bucket("c", "ab") != bucket("bc", "a")


def test_raising_the_share_only_moves_users_into_treatment() -> None:
    for u in USERS[:5000]:
        if assign_arm(u, "exp-1", 0.3) == "treatment":
            assert assign_arm(u, "exp-1", 0.6) == "treatment"


def test_share_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError):
        assign_arm("u", "s", 1.5)


def test_hash_is_stable_keyed_and_truncated_hmac() -> None:
    h = UserHasher("k1")
    assert h.hash("alice") == UserHasher(b"k1").hash("alice")
    assert h.hash("alice") != UserHasher("k2").hash("alice")
    assert h.hash("alice") != h.hash("bob")
    assert h.hash("alice") == hmac.new(b"k1", b"alice", hashlib.sha256).hexdigest()[:32]
    assert "k1" not in repr(h)
    with pytest.raises(ValueError):
        UserHasher("")


@given(st.text(min_size=1))
def test_hash_never_contains_the_raw_id(user_id: str) -> None:
    out = UserHasher("secret").hash(user_id)
    assert len(out) == 32 and set(out) <= set("0123456789abcdef")
    assert len(user_id) < 4 or user_id not in out
