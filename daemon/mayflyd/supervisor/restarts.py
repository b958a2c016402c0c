"""When a tenant's host is started again: at once, or after a backoff.

A host that dies is restarted at once: a host killed from outside, by the
OOM killer or with its zygote, is not a reason to keep a tenant's clients
waiting. Only a crash loop backs off, as in Erlang/OTP's restart intensity:
more than CRASH_LOOP_DEATHS deaths within CRASH_LOOP_WINDOW seconds, counting
only the hosts that died before serving (no answer from the program, less
than STABLE_AFTER seconds up). A program that fails to load backs off from
its first failure, since it would fail again at once. The rule and its
numbers: docs/design.md, "Restarting a host".
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

__all__ = ["BACKOFF_FIRST", "BACKOFF_MAX", "CRASH_LOOP_DEATHS", "CRASH_LOOP_WINDOW", "STABLE_AFTER",
           "Restart", "RestartIntensity"]

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 30.0
# More than this many deaths before serving within the window is a crash loop.
CRASH_LOOP_DEATHS = 5
CRASH_LOOP_WINDOW = 10.0
# A host up this long had served its purpose, requests or not: its death counts as healthy.
STABLE_AFTER = 10.0


@dataclass(frozen=True, slots=True)
class Restart:
    """How long to wait before the next start (0: at once), and why."""

    delay: float
    why: str


@dataclass(slots=True)
class RestartIntensity:
    """One tenant's restart policy: its recent deaths and its backoff."""

    max_deaths: int = CRASH_LOOP_DEATHS
    window: float = CRASH_LOOP_WINDOW
    _deaths: deque[float] = field(default_factory=deque)  # monotonic times of deaths before serving
    _looping: bool = False  # in a crash loop until a host serves
    _loop_delay: float = BACKOFF_FIRST  # the crash loop's next backoff
    _load_delay: float = BACKOFF_FIRST  # the next backoff after a load failure

    def after_death(self, now: float, *, uptime: float, served: int) -> Restart:
        """A host died at `now` after `uptime` seconds and `served` answers of the program."""
        if served > 0 or uptime >= STABLE_AFTER:
            # It served: whatever ended it, the program works. A crash loop (if any) is over.
            self._deaths.clear()
            self._looping = False
            self._loop_delay = BACKOFF_FIRST
            why = f"it had served {served} requests" if served else f"it had run for {uptime:.0f}s"
            return Restart(0.0, why)
        self._deaths.append(now)
        while now - self._deaths[0] > self.window:
            self._deaths.popleft()
        recent = len(self._deaths)
        if not self._looping and recent <= self.max_deaths:
            return Restart(0.0, f"death {recent} before serving in {self.window:g}s "
                                f"(more than {self.max_deaths} is a crash loop)")
        self._looping = True
        delay, self._loop_delay = self._loop_delay, _doubled(self._loop_delay)
        return Restart(delay, f"a crash loop: more than {self.max_deaths} deaths before "
                                           f"serving in {self.window:g}s, and no host served since")

    def after_load_failure(self) -> float:
        """The program failed to load: the wait before the next try, doubling up to BACKOFF_MAX."""
        delay, self._load_delay = self._load_delay, _doubled(self._load_delay)
        return delay

    def loaded(self) -> None:
        """A host is ready: the program loads, a later load failure backs off afresh."""
        self._load_delay = BACKOFF_FIRST


def _doubled(delay: float) -> float:
    return min(delay * 2, BACKOFF_MAX)
