"""The one token bucket, alone and as the UDP gate's per-source limit, on a clock we move."""

from __future__ import annotations

from gateway.drivers.ingress import SourceGate, Verdict, parse_networks
from gateway.ratelimit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_gives_its_burst_then_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(2.0, 5, clock)
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]
    clock.now += 1.0  # two tokens back
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    clock.now += 3600.0  # never more than the burst
    assert sum(bucket.take() for _ in range(10)) == 5


def test_the_gate_limits_each_source_on_its_own_and_forgets_the_least_recent() -> None:
    clock = Clock()
    gate = SourceGate(rate=1.0, burst=2, max_sources=2, clock=clock)
    assert [gate.admit("10.0.0.1") for _ in range(3)] == [
        Verdict.ADMIT,
        Verdict.ADMIT,
        Verdict.RATE_LIMITED,
    ]
    assert gate.admit("10.0.0.2") is Verdict.ADMIT  # another source has its own bucket
    clock.now += 1.0
    assert gate.admit("10.0.0.1") is Verdict.ADMIT
    assert gate.admit("10.0.0.1") is Verdict.RATE_LIMITED
    gate.admit("10.0.0.3")  # a third source: 10.0.0.2, heard least recently, is forgotten
    assert gate.sources == 2
    assert gate.stats.sources_forgotten == 1
    assert gate.stats.dropped_rate_limited == 2
    assert [gate.admit("10.0.0.2") for _ in range(2)] == [Verdict.ADMIT] * 2  # back, full


def test_a_source_outside_allow_takes_no_bucket() -> None:
    gate = SourceGate(parse_networks(["10.64.0.0/16"]), clock=Clock())
    assert gate.admit("192.0.2.7") is Verdict.NOT_ALLOWED
    assert gate.admit("::ffff:10.64.1.2") is Verdict.ADMIT  # a dual-stack socket's view
    assert gate.sources == 1
    assert gate.stats.dropped_not_allowed == 1
