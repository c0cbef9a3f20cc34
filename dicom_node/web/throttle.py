"""Per-address throttling of failed authentication: a few failures are free, then a lockout that doubles.

An address may fail `max_failures` times within `window_s`; that last failure locks it out for
`lockout_s`, and every further lockout doubles, up to `lockout_max_s` (exponential backoff). While
locked out an address gets no answer to any credential it sends: the caller refuses with 429 before
looking at the credential, so a guess costs nothing and reveals nothing. A success clears the address.
The check and the recording happen under one lock, so parallel guesses cannot slip between them.

IPv6 callers are counted per /64 (one host usually holds a whole /64). At most `max_addresses` are
tracked; the one that failed longest ago is forgotten first, and an address whose last failure is
older than `lockout_max_s` (and that is not locked) is forgotten too.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from dicom_node.config import WebSection

MAX_TRACKED_ADDRESSES = 10_000
IPV6_PREFIX = 64
MAX_ADDRESS_CHARS = 64


def address_key(host: str) -> str:
    """The unit that is throttled: an IPv4 address, an IPv6 /64, or (not an address) the text itself, cut short."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:MAX_ADDRESS_CHARS] or "?"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{IPV6_PREFIX}", strict=False))
    return str(ip)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one failure did: `locked_for_s` > 0 when it started a lockout."""

    failures: int              # failures in the window, this one included (0 once it locked the address)
    locked_for_s: float
    lockouts: int              # lockouts of this address so far


@dataclass(slots=True)
class _Address:
    failures: list[float]      # times of the failures in the window, oldest first
    locked_until: float = 0.0
    lockouts: int = 0
    last_failure: float = 0.0


class AuthThrottle:
    def __init__(self, *, max_failures: int, window_s: float, lockout_s: float, lockout_max_s: float,
                 max_addresses: int = MAX_TRACKED_ADDRESSES, clock: Callable[[], float] = time.monotonic) -> None:
        if max_failures < 1 or window_s <= 0 or lockout_s <= 0 or lockout_max_s < lockout_s or max_addresses < 1:
            raise ValueError(f"bad throttle settings: max_failures={max_failures}, window_s={window_s}, "
                             f"lockout_s={lockout_s}, lockout_max_s={lockout_max_s}, max_addresses={max_addresses}")
        self.max_failures, self.window_s = max_failures, window_s
        self.lockout_s, self.lockout_max_s = lockout_s, lockout_max_s
        self._max_addresses = max_addresses
        self._clock = clock
        self._addresses: OrderedDict[str, _Address] = OrderedDict()   # least recently failed first
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: WebSection, clock: Callable[[], float] = time.monotonic) -> AuthThrottle:
        return cls(max_failures=cfg.auth_max_failures, window_s=cfg.auth_window_s, lockout_s=cfg.auth_lockout_s,
                   lockout_max_s=cfg.auth_lockout_max_s, clock=clock)

    def retry_after(self, key: str) -> float:
        """Seconds this address is still locked out (0.0: it may try)."""
        with self._lock:
            entry = self._addresses.get(key)
            return 0.0 if entry is None else max(0.0, entry.locked_until - self._clock())

    def failure(self, key: str) -> Verdict:
        now = self._clock()
        with self._lock:
            entry = self._addresses.pop(key, None) or _Address(failures=[])
            self._addresses[key] = entry                     # now the most recently failed
            entry.last_failure = now
            entry.failures = [t for t in entry.failures if now - t < self.window_s] + [now]
            locked_for = 0.0
            if len(entry.failures) >= self.max_failures:
                locked_for = min(self.lockout_s * 2.0 ** entry.lockouts, self.lockout_max_s)
                entry.lockouts += 1
                entry.locked_until = now + locked_for
                entry.failures = []
            self._forget(now)
            return Verdict(len(entry.failures), locked_for, entry.lockouts)

    def success(self, key: str) -> None:
        with self._lock:
            self._addresses.pop(key, None)

    def locked_count(self) -> int:
        now = self._clock()
        with self._lock:
            return sum(1 for e in self._addresses.values() if e.locked_until > now)

    def tracked_count(self) -> int:
        with self._lock:
            return len(self._addresses)

    def _forget(self, now: float) -> None:
        """Drop stale addresses (oldest failure first), and the oldest ones beyond the table's size."""
        while self._addresses:
            key, oldest = next(iter(self._addresses.items()))
            stale = oldest.locked_until <= now and now - oldest.last_failure > self.lockout_max_s
            if not stale and len(self._addresses) <= self._max_addresses:
                break
            del self._addresses[key]
