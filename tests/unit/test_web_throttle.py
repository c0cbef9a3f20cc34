"""The per-address authentication throttle, on an injected clock (no node, no sockets)."""

from __future__ import annotations

import pytest

from dicom_node.config import WebSection
from dicom_node.web.throttle import AuthThrottle, address_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def throttle(clock: Clock, **kwargs: float) -> AuthThrottle:
    settings: dict[str, float] = {"max_failures": 3, "window_s": 60.0, "lockout_s": 10.0, "lockout_max_s": 35.0}
    settings.update(kwargs)
    return AuthThrottle(max_failures=int(settings.pop("max_failures")), clock=clock,
                        max_addresses=int(settings.pop("max_addresses", 100)), **settings)


def test_failures_up_to_the_limit_are_free_then_the_address_is_locked() -> None:
    clock = Clock()
    t = throttle(clock)
    assert [t.failure("10.0.0.1").failures for _ in range(2)] == [1, 2]
    assert t.retry_after("10.0.0.1") == 0.0
    verdict = t.failure("10.0.0.1")
    assert verdict.locked_for_s == 10.0 and verdict.lockouts == 1 and verdict.failures == 0
    assert t.retry_after("10.0.0.1") == pytest.approx(10.0)
    assert t.retry_after("10.0.0.2") == 0.0                       # other addresses are not affected
    assert t.locked_count() == 1
    clock.now += 4
    assert t.retry_after("10.0.0.1") == pytest.approx(6.0)
    clock.now += 6
    assert t.retry_after("10.0.0.1") == 0.0 and t.locked_count() == 0


def test_each_lockout_doubles_up_to_the_maximum() -> None:
    clock = Clock()
    t = throttle(clock)
    lockouts = []
    for _ in range(4):
        for _ in range(3):
            verdict = t.failure("a")
        lockouts.append(verdict.locked_for_s)
        clock.now += verdict.locked_for_s
    assert lockouts == [10.0, 20.0, 35.0, 35.0]


def test_failures_older_than_the_window_are_forgotten() -> None:
    clock = Clock()
    t = throttle(clock)
    t.failure("a")
    t.failure("a")
    clock.now += 61
    assert t.failure("a").failures == 1                           # the first two fell out of the window
    assert t.retry_after("a") == 0.0


def test_a_success_clears_the_address() -> None:
    clock = Clock()
    t = throttle(clock)
    for _ in range(3):
        t.failure("a")
    clock.now += 10
    t.success("a")
    assert t.tracked_count() == 0
    for _ in range(3):
        verdict = t.failure("a")
    assert verdict.locked_for_s == 10.0                           # back to the first lockout's length


def test_the_table_is_bounded_and_forgets_stale_addresses() -> None:
    clock = Clock()
    t = throttle(clock, max_addresses=5)
    for i in range(50):
        t.failure(f"10.0.0.{i}")
    assert t.tracked_count() == 5
    clock.now += 36                                               # past lockout_max_s since their last failure
    t.failure("10.0.1.1")
    assert t.tracked_count() == 1


def test_ipv6_callers_are_counted_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert address_key("127.0.0.2") == "127.0.0.2"
    assert address_key("testclient") == "testclient" and address_key("x" * 500) == "x" * 64
    assert address_key("") == "?"


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="bad throttle settings: max_failures=0"):
        AuthThrottle(max_failures=0, window_s=1.0, lockout_s=1.0, lockout_max_s=1.0)
    with pytest.raises(ValueError, match=r"lockout_max_s=1\.0"):
        AuthThrottle(max_failures=1, window_s=1.0, lockout_s=2.0, lockout_max_s=1.0)
    built = AuthThrottle.from_config(WebSection(auth_max_failures=7, auth_lockout_s=5.0))
    assert built.max_failures == 7 and built.lockout_s == 5.0 and built.lockout_max_s == 3600.0
