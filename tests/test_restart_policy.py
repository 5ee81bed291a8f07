"""Backoff with jitter and the intensity limit, on an injected clock (exact and instant)."""

import random

import pytest

from system import RestartPolicy


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy(**kw) -> tuple[RestartPolicy, FakeClock]:
    clock = FakeClock()
    return RestartPolicy(clock=clock, rng=random.Random(0), **kw), clock


def test_backoff_doubles_per_consecutive_death_up_to_the_cap() -> None:
    p, _ = policy(base=0.1, cap=1.0, jitter=0.0)
    assert [p.on_death(0, uptime=0.0) for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_jitter_shortens_by_at_most_its_fraction() -> None:
    p, _ = policy(base=1.0, cap=1.0, jitter=0.5)
    delays = [p.on_death(i, uptime=0.0) for i in range(50)]
    assert all(0.5 <= d <= 1.0 for d in delays)
    assert len(set(delays)) > 40  # really random


def test_a_worker_that_stayed_up_starts_again_from_base() -> None:
    p, _ = policy(base=0.1, cap=10.0, jitter=0.0, reset_after=5.0)
    for _ in range(4):
        p.on_death(0, uptime=0.0)
    assert p.on_death(0, uptime=6.0) == 0.1
    assert p.on_death(1, uptime=0.0) == 0.1  # slots back off independently


def test_a_worker_that_committed_work_starts_again_from_base() -> None:
    """Backoff is for a crash loop: a worker killed after getting work done is not one."""
    p, _ = policy(base=0.1, cap=10.0, jitter=0.0, reset_after=5.0)
    assert [p.on_death(0, uptime=0.2, progressed=True) for _ in range(4)] == [0.1] * 4
    assert [p.on_death(0, uptime=0.2) for _ in range(3)] == [0.2, 0.4, 0.8]
    assert p.on_death(0, uptime=0.2, progressed=True) == 0.1


def test_intensity_limit_gives_up_and_forgets_old_restarts() -> None:
    p, clock = policy(max_restarts=3, window=10.0, jitter=0.0)
    assert all(p.on_death(0, 0.0) is not None for _ in range(3))
    assert p.on_death(0, 0.0) is None
    clock.now += 10.0
    assert p.on_death(0, 0.0) is not None
    assert p.restarts_in_window() == 1


@pytest.mark.parametrize("kw", [{"base": 0}, {"cap": 0.0001}, {"jitter": 2}, {"window": 0}])
def test_bad_settings_are_refused(kw: dict) -> None:
    with pytest.raises(ValueError, match="RestartPolicy needs"):
        RestartPolicy(**kw)
