"""Placement policies (kernel/placement/): their decisions on call sequences, and the
invariants every policy keeps (capacity, direction, determinism)."""

from __future__ import annotations

import random

import pytest

from underbridge.kernel.placement import POLICIES, Decision, View, policy_named
from underbridge.kernel.placement.frequency import FrequencyPolicy
from underbridge.kernel.placement.lru import LruPolicy


def run(policy, calls, placed=(), capacity=15):
    """Feed `calls` to the policy, applying its decisions; the decisions in order."""
    placed = set(placed)
    log = []
    for server in calls:
        decisions = policy.on_call(server, View(frozenset(placed), capacity))
        for decision in decisions:
            if decision.to_kernel:
                assert decision.server not in placed
                placed.add(decision.server)
            else:
                assert decision.server in placed
                placed.discard(decision.server)
            assert len(placed) <= capacity or not decision.to_kernel
        assert len(placed) <= capacity
        log.extend(decisions)
    return log, placed


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown placement policy 'nope'; known: static"):
        policy_named("nope")


def test_static_places_first_comers_and_never_moves_them():
    log, placed = run(policy_named("static"), ["a", "b", "c", "a", "d", "d", "d"], capacity=2)
    assert log == [
        Decision("a", True, "first come, a key is free"),
        Decision("b", True, "first come, a key is free"),
    ]
    assert placed == {"a", "b"}


def test_frequency_moves_the_hot_in_and_the_cold_out():
    policy = FrequencyPolicy(window=64, period=16, margin=4)
    phase1 = ["a", "b"] * 32  # a and b hot
    phase2 = ["c", "d"] * 32  # then c and d
    log, placed = run(policy, phase1 + phase2, capacity=2)
    assert placed == {"c", "d"}
    assert [(d.server, d.to_kernel) for d in log] == [
        ("a", True),
        ("b", True),
        ("a", False),  # moves out first, then in
        ("b", False),
        ("c", True),
        ("d", True),
    ]
    assert log[0].reason == "hot: 8 of the last 16 calls, a key is free"
    assert log[2].reason == "cold: 8 calls, making room for c"
    assert log[4].reason == "hot: 24 of the last 64 calls, in place of a"


def test_frequency_hysteresis_keeps_nearly_equal_servers_where_they_are():
    policy = FrequencyPolicy(window=64, period=16, margin=8)
    # b is in kernel space; a and b are called almost equally: no swap, ever
    calls = (["a", "b"] * 7 + ["a"]) * 20
    log, placed = run(policy, calls, placed={"b"}, capacity=1)
    assert log == [] and placed == {"b"}


def test_lru_moves_in_after_repeated_misses_evicting_the_least_recent():
    policy = LruPolicy(misses=3)
    log, placed = run(policy, ["a", "a", "a", "b", "a", "b", "c", "b", "c", "c"], capacity=2)
    assert [(d.server, d.to_kernel) for d in log] == [
        ("a", True),
        ("b", True),
        ("a", False),  # a was called less recently than b
        ("c", True),
    ]
    assert log[2].reason == "least recently called (5 calls ago), for c"
    assert placed == {"b", "c"}


@pytest.mark.parametrize("name", POLICIES)
def test_every_policy_respects_capacity_and_is_deterministic(name):
    rng = random.Random(7)
    calls = [f"s{rng.randrange(24) if i % 500 < 250 else rng.randrange(4)}" for i in range(3000)]
    first, placed = run(policy_named(name), calls, capacity=15)
    second, _ = run(policy_named(name), calls, capacity=15)
    assert first == second and len(placed) <= 15
    assert run(policy_named(name), calls, capacity=0)[0] == []  # no key, no move
