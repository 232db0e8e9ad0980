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


RANK = {"control": 0, "uniform": 1, "treatment": 2}


@pytest.mark.parametrize(("t", "u"), [(1 / 3, 1 / 3), (0.2, 0.5), (0.0, 1.0), (0.5, 0.0)])
def test_three_way_shares_over_100k_users(t: float, u: float) -> None:
    arms = [assign_arm(x, "exp-1", t, u) for x in USERS]
    for arm, share in (("treatment", t), ("uniform", u), ("control", 1 - t - u)):
        got = arms.count(arm) / len(USERS)
        assert abs(got - share) < 4 * (share * (1 - share) / len(USERS)) ** 0.5 + 1e-12, arm


def test_no_uniform_share_is_the_two_arm_split_of_before() -> None:
    """Old salts keep their split: with uniform share 0 the arm is the old rule, bucket < share."""
    for share in (0.1, 0.5):
        assert all(assign_arm(x, "exp-1", share, 0.0) == ("treatment" if bucket(x, "exp-1") < share else "control")
                   for x in USERS[:20_000])


@given(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1))
def test_raising_shares_moves_users_only_toward_treatment(t: float, u: float, dt: float, du: float) -> None:
    """Along control -> uniform -> treatment: with the treatment share and the treatment + uniform total
    both not lower, no user moves back."""
    t, u = t, u * (1 - t)
    t2 = t + dt * (1 - t)
    u2 = max(u - (t2 - t), 0.0) + du * (1 - t2 - max(u - (t2 - t), 0.0))  # t2 + u2 >= t + u, t2 + u2 <= 1
    assert t2 >= t and t2 + u2 >= t + u - 1e-12
    for x in USERS[:300]:
        assert RANK[assign_arm(x, "s", min(t2, 1.0), min(u2, 1.0 - min(t2, 1.0)))] >= RANK[assign_arm(x, "s", t, u)]


@pytest.mark.parametrize(("t", "u"), [(0.6, 0.5), (0.5, -0.1), (0.2, 1.2)])
def test_impossible_shares_are_refused(t: float, u: float) -> None:
    with pytest.raises(ValueError, match="uniform_share"):
        assign_arm("u-1", "exp-1", t, u)
