"""The restart intensity rule: restarts at once, backoff only for a crash loop or a load failure."""
from __future__ import annotations

from mayflyd.supervisor.restarts import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    CRASH_LOOP_DEATHS,
    CRASH_LOOP_WINDOW,
    STABLE_AFTER,
    RestartIntensity,
)


def unserved_deaths(policy: RestartIntensity, times: list[float]) -> list[float]:
    return [policy.after_death(t, uptime=0.2, served=0).delay for t in times]


def test_a_host_that_served_is_restarted_at_once_however_often_it_dies() -> None:
    policy = RestartIntensity()
    # The fault soak's pattern, and faster: a kill every 0.1 s, each after some answers.
    restarts = [policy.after_death(i * 0.1, uptime=0.1, served=3) for i in range(100)]
    assert {r.delay for r in restarts} == {0.0}
    assert restarts[0].why == "it had served 3 requests"


def test_a_host_up_long_enough_is_healthy_without_requests() -> None:
    policy = RestartIntensity()
    unserved_deaths(policy, [0.0, 0.1, 0.2, 0.3, 0.4])
    restart = policy.after_death(0.5, uptime=STABLE_AFTER, served=0)
    assert restart.delay == 0.0 and restart.why == "it had run for 10s"
    # Its death cleared the count: five more before serving are still restarted at once.
    assert unserved_deaths(policy, [0.6, 0.7, 0.8, 0.9, 1.0]) == [0.0] * 5


def test_more_than_n_deaths_before_serving_in_the_window_back_off_doubling() -> None:
    policy = RestartIntensity()
    times = [i * 0.5 for i in range(CRASH_LOOP_DEATHS + 4)]
    delays = unserved_deaths(policy, times)
    assert delays == [0.0] * CRASH_LOOP_DEATHS + [BACKOFF_FIRST * 2 ** i for i in range(4)]
    assert policy.after_death(times[-1] + 1, uptime=0.1, served=0).why.startswith("a crash loop: more than 5")


def test_deaths_spread_wider_than_the_window_are_not_a_crash_loop() -> None:
    policy = RestartIntensity()
    step = CRASH_LOOP_WINDOW / CRASH_LOOP_DEATHS + 0.01  # at most five in any window
    assert unserved_deaths(policy, [i * step for i in range(30)]) == [0.0] * 30


def test_a_crash_loop_lasts_until_a_host_serves() -> None:
    policy = RestartIntensity()
    unserved_deaths(policy, [i * 0.1 for i in range(CRASH_LOOP_DEATHS + 1)])
    # The backoff spreads the deaths beyond the window; still a loop, still growing.
    assert unserved_deaths(policy, [100.0, 200.0]) == [0.2, 0.4]
    assert policy.after_death(300.0, uptime=1.0, served=1).delay == 0.0
    assert unserved_deaths(policy, [400.0]) == [0.0]


def test_a_load_failure_backs_off_from_the_first_and_doubles_to_the_ceiling() -> None:
    policy = RestartIntensity()
    delays = [policy.after_load_failure() for _ in range(12)]
    assert delays[:4] == [0.1, 0.2, 0.4, 0.8]
    assert delays[-1] == BACKOFF_MAX and max(delays) == BACKOFF_MAX
    # Once a host is ready, a later failure backs off afresh.
    policy.loaded()
    assert policy.after_load_failure() == BACKOFF_FIRST


def test_load_failures_and_a_crash_loop_keep_their_own_backoff() -> None:
    policy = RestartIntensity()
    unserved_deaths(policy, [i * 0.1 for i in range(CRASH_LOOP_DEATHS + 2)])  # waits 0.1, 0.2
    policy.loaded()  # each host of a crash loop is ready before it dies
    assert unserved_deaths(policy, [1.0]) == [0.4]
    assert policy.after_load_failure() == BACKOFF_FIRST
