"""Who may talk to a network input, and how fast: the checks before any byte is decoded.

A UDP datagram's source address is whatever the sender wrote, so this is not
authentication: ``allow`` keeps out hosts that cannot spoof an address inside
it (the usual case for an operator's APN or a site LAN), and the per-source
token bucket keeps any one source from taking the loop or the queue. Both are
counted. The bucket table is bounded (``max_sources``): when full, the source
heard least recently is forgotten, and comes back with a full bucket.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from gateway.ratelimit import TokenBucket

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SOURCE_RATE = 20.0  # datagrams per second per source, sustained
SOURCE_BURST = 100  # datagrams a quiet source may send at once
MAX_SOURCES = 1024  # sources whose buckets are remembered


class Verdict(StrEnum):
    ADMIT = "admit"
    NOT_ALLOWED = "not_allowed"
    RATE_LIMITED = "rate_limited"


@dataclass
class GateStats:
    dropped_not_allowed: int = 0
    dropped_rate_limited: int = 0
    sources_forgotten: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "dropped_not_allowed": self.dropped_not_allowed,
            "dropped_rate_limited": self.dropped_rate_limited,
            "sources_forgotten": self.sources_forgotten,
        }


def parse_networks(values: Sequence[str]) -> tuple[Network, ...]:
    """``["10.20.0.0/16", "192.0.2.7"]`` → networks; ValueError names the bad entry."""
    out: list[Network] = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an address or CIDR network") from None
    return tuple(out)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket's view of an IPv4 sender
    return address


class SourceGate:
    """``admit(host)`` for every datagram, before it is decoded."""

    def __init__(
        self,
        allow: tuple[Network, ...] = (),
        *,
        rate: float = SOURCE_RATE,
        burst: int = SOURCE_BURST,
        max_sources: int = MAX_SOURCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.allow = allow
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self.stats = GateStats()
        self._clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def allowed(self, host: str) -> bool:
        if not self.allow:
            return True
        address = _address(host)
        return address is not None and any(address in net for net in self.allow)

    def admit(self, host: str) -> Verdict:
        bucket = self._buckets.get(host)
        if bucket is None:
            if not self.allowed(host):
                self.stats.dropped_not_allowed += 1
                return Verdict.NOT_ALLOWED
            bucket = TokenBucket(self.rate, self.burst, self._clock)
            self._buckets[host] = bucket
            if len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
                self.stats.sources_forgotten += 1
        else:
            self._buckets.move_to_end(host)
        if not bucket.take():
            self.stats.dropped_rate_limited += 1
            return Verdict.RATE_LIMITED
        return Verdict.ADMIT

    @property
    def sources(self) -> int:
        return len(self._buckets)
