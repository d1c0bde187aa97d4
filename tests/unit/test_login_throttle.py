"""rag.webui.login.LoginThrottle: password guessing limited per client address across sessions (issue 17 #12)."""

from __future__ import annotations

import pytest

from rag.webui import login
from rag.webui.login import LoginThrottle


class FakeClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def test_an_address_is_locked_out_after_max_failures_for_a_while() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(max_failures=3, window_s=60, lockout_s=300, clock=clock)
    assert throttle.failed("10.0.0.7") == 0.0
    clock.now += 10
    assert throttle.failed("10.0.0.7") == 0.0  # two sessions or two tabs: the same address, one count
    assert throttle.locked_for("10.0.0.7") == 0.0
    assert throttle.failed("10.0.0.7") == 300.0
    assert throttle.locked_for("10.0.0.8") == 0.0  # other clients are not affected
    clock.now += 299
    assert throttle.locked_for("10.0.0.7") == 1.0
    clock.now += 1
    assert throttle.locked_for("10.0.0.7") == 0.0
    assert throttle.failed("10.0.0.7") == 0.0  # the count started again after the lock-out


def test_failures_older_than_the_window_do_not_count_and_success_forgets() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(max_failures=2, window_s=60, lockout_s=300, clock=clock)
    throttle.failed("a")
    clock.now += 61
    assert throttle.failed("a") == 0.0  # the first one expired
    throttle.succeeded("a")
    assert throttle.failed("a") == 0.0  # forgotten by the right password
    assert throttle.failed("a") == 300.0


def test_memory_stays_bounded_under_many_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(login, "MAX_ADDRESSES", 50)
    clock = FakeClock()
    throttle = LoginThrottle(max_failures=2, window_s=60, lockout_s=300, clock=clock)
    throttle.failed("victim")
    throttle.failed("victim")  # locked
    for number in range(200):
        throttle.failed(f"10.1.{number // 256}.{number % 256}")
    assert len(throttle._records) <= 50
    assert throttle.locked_for("victim") == 300.0  # spraying from many addresses does not flush a lock-out
    with pytest.raises(ValueError, match="max_failures=0 must be at least 1"):
        LoginThrottle(max_failures=0)
