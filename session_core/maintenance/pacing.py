"""Datastore's ramp-up rule for new load, as a schedule a run's deletes follow.

Google's guidance for a new load on Datastore: start at 500 operations a
second and raise by at most 50 % every 5 minutes. A run may delete at most
``start * 1.5 ** floor(t / period)`` sessions a second at ``t`` seconds after it
started, shared by all its chains. The schedule is computed from the run's
start time, which every step carries, so no coordination store is needed:
each of a run's ``chains`` takes ``1 / chains`` of the budget.

The schedule is pure (:func:`budget`, :func:`time_for`); :class:`Pacer` is the
one piece that sleeps, with its clock and sleep passed in; :func:`pacer_for`
builds a step's pacer from the settings, the one place every operation does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from session_core.config import Settings

GROWTH = 1.5


def budget(elapsed: float, start: float, period: float) -> float:
    """How many deletes the schedule allows in total within ``elapsed`` seconds of the run's start."""
    if elapsed <= 0:
        return 0.0
    whole = math.floor(elapsed / period)
    full_periods = start * period * (GROWTH**whole - 1) / (GROWTH - 1)
    return full_periods + start * GROWTH**whole * (elapsed - whole * period)


def time_for(deletes: float, start: float, period: float) -> float:
    """The first moment, in seconds after the run's start, by which the schedule allows ``deletes`` in total."""
    if deletes <= 0:
        return 0.0
    whole = 0
    while budget((whole + 1) * period, start, period) < deletes:
        whole += 1
    left = deletes - budget(whole * period, start, period)
    return whole * period + left / (start * GROWTH**whole)


def rate(elapsed: float, start: float, period: float) -> float:
    """Deletes a second the schedule allows at ``elapsed`` seconds after the run's start."""
    return start * GROWTH ** math.floor(max(elapsed, 0.0) / period)


@dataclass
class Pacer:
    """Holds one chain of a run to its share of the schedule.

    ``run_started`` is the run's start (epoch seconds, the same for all its
    chains); ``done`` what this chain deleted before this step. Call
    :meth:`take` before committing ``count`` deletes: it sleeps until the
    schedule allows them. Two limits hold: the chain's running total never
    runs ahead of its share of the schedule's total by more than the commit
    it is about to make, and after each commit the chain waits as long as
    that commit takes at its share of the current rate, so a chain that fell
    behind (or started late) catches up at the allowed rate, not in a burst.
    A start later than the clock (a caller's simulated ``now``) counts as
    now: nothing waits for a future start.

    ``within`` is the step's time budget (seconds from now; None: no
    deadline, as when a run goes on inline). A pacer never sleeps past that
    deadline, whatever ``done`` a step carries: :meth:`take` answers False
    at once when the schedule allows ``count`` only later, and :meth:`fits`
    says so before a caller waits.
    """

    start: float
    period: float
    run_started: float
    chains: int = 1
    done: int = 0
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep
    within: float | None = None
    waited: float = field(default=0.0, init=False)
    free_at: float = field(default=0.0, init=False)  # when the last commit's share of the rate is used up
    deadline: float | None = field(default=None, init=False)  # on ``clock``: ``within`` from the start

    def __post_init__(self) -> None:
        now = self.clock()
        self.run_started = min(self.run_started, now)
        self.deadline = None if self.within is None else now + self.within

    def _share(self, now: float) -> float:
        """This chain's deletes a second at ``now``."""
        return rate(now - self.run_started, self.start, self.period) / self.chains

    def delay(self, count: int) -> float:
        """Seconds to wait before committing ``count`` more deletes (0: now)."""
        now = self.clock()
        wanted = (self.done + count) * self.chains  # the run's total, if every chain kept pace with this one
        ready_at = max(self.run_started + time_for(wanted, self.start, self.period), self.free_at)
        return max(0.0, ready_at - now)

    def took(self, count: int) -> None:
        """Count ``count`` deletes as committed now."""
        now = self.clock()
        self.done += count
        self.free_at = now + count / self._share(now)

    def fits(self, delay: float) -> bool:
        """Whether waiting ``delay`` seconds from now ends by the deadline (always, without one)."""
        return self.deadline is None or self.clock() + delay <= self.deadline

    def take(self, count: int) -> bool:
        """Wait until the schedule allows ``count`` more deletes and count them; False, at once, past the deadline."""
        delay = self.delay(count)
        if not self.fits(delay):
            return False
        if delay > 0:
            self.waited += delay
            self.sleep(delay)
        self.took(count)
        return True

    def allowance(self, within: float) -> int:
        """How many deletes this chain may commit in the next ``within`` seconds (at most; for sizing a page)."""
        now = self.clock()
        by_schedule = budget(now + within - self.run_started, self.start, self.period) / self.chains - self.done
        by_rate = self._share(now) * max(within - max(self.free_at - now, 0.0), 0.0)
        return max(0, math.floor(min(by_schedule, by_rate)))


class Paced(Protocol):
    """What a pacer needs of a step: its run's start and what its chain did before it."""

    @property
    def started(self) -> float: ...

    @property
    def done(self) -> int: ...


def pacer_for(
    settings: Settings, step: Paced, *, chains: int = 1, within: float | None = None, now: float | None = None
) -> Pacer | None:
    """The pacer of one step of a run of ``chains`` chains; None when ``SESSION_RAMPUP`` is off.

    ``within`` is the step's time budget (None: no deadline); a step that
    carries no start (0) is paced from ``now`` (default: the clock).
    """
    if not settings.rampup:
        return None
    run_started = step.started or (time.time() if now is None else now)
    period = settings.rampup_period.total_seconds()
    return Pacer(settings.rampup_start, period, run_started, chains=chains, done=step.done, within=within)
