"""Guarded progressive rollout: move an alias to a new version step by step, promoting
while it stays within bounds and rolling back at once when it does not.

A rollout (``POST /admin/versions/{alias}/rollout``: ``to``, ``steps`` in percent,
``hold_s``) runs in the replica that took the call. At each step it writes the split
(``100 - p`` on the base version, ``p`` on the new one), then holds: every
``check_interval_s`` it compares the new version's requests since the step began with
the base version's (error rate, TTFT p99; the store's
:class:`~gateway.stores.VersionMeasurements`, which count every replica's requests),
and a breach rolls the alias back to the policy it had before the rollout, at once.
When the hold ends within bounds (with at least ``min_requests`` judged) the next step
follows; after the last, the rollout is done. Every decision is logged and kept with
the rollout, with the figures it was made on, which the admin API shows.

The window of a step starts at the whole second its split was written in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import AliasNotFound, Conflict, InvalidField, SluiceError
from gateway.stores import VersionMeasurements, VersionPolicy, Window
from gateway.versions.config import RolloutSettings
from gateway.versions.router import VersionRouter, policy_json
from gateway.versions.service import VersionService

log = logging.getLogger("sluice.rollout")


@dataclass(slots=True)
class Decision:
    at: float
    step: int
    percent: float
    action: str
    """``step`` (split written), ``promote`` (hold passed), ``extend`` (too few
    requests yet), ``breach``, ``rollback``, ``superseded``, ``done``, ``cancelled``,
    ``failed``."""
    reason: str
    new: dict[str, float | int | None] = field(default_factory=dict)
    base: dict[str, float | int | None] = field(default_factory=dict)
    """The figures of each side over the hold so far: requests, errors, error_rate,
    ttft_p50_s, ttft_p99_s (None without a TTFT)."""


@dataclass(slots=True)
class Rollout:
    alias: str
    to: str
    base: str
    steps: list[float]
    hold_s: float
    before: VersionPolicy
    state: str = "running"
    """``running``, ``done``, ``rolled_back``, ``superseded`` (the policy was changed
    by another call meanwhile: the rollout stops and leaves it), ``cancelled`` or
    ``failed``."""
    written: VersionPolicy | None = None
    """The split the rollout wrote last."""
    decisions: list[Decision] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def public(self) -> dict[str, Any]:
        return {"alias": self.alias, "to": self.to, "base": self.base,
                "steps": self.steps, "hold_s": self.hold_s, "state": self.state,
                "before": policy_json(self.before),
                "decisions": [{"at": d.at, "step": d.step, "percent": d.percent,
                               "action": d.action, "reason": d.reason, "new": d.new,
                               "base": d.base} for d in self.decisions]}


class _Superseded(Exception):
    """The alias's policy is no longer the one the rollout wrote."""


class Rollouts:
    """The guarded rollouts of this replica: at most one running per alias."""

    def __init__(self, service: VersionService, router: VersionRouter,
                 measurements: VersionMeasurements, settings: RolloutSettings) -> None:
        self._service = service
        self._router = router
        self._measurements = measurements
        self._bounds = settings
        self._rollouts: dict[str, Rollout] = {}

    def get(self, alias: str) -> Rollout:
        rollout = self._rollouts.get(alias)
        if rollout is None:
            raise AliasNotFound(f"alias '{alias[:100]}' has had no rollout here",
                                code="no_rollout")
        return rollout

    async def start(self, alias: str, to: str, steps: list[float], hold_s: float,
                    base: str | None = None) -> Rollout:
        """Begin a rollout of ``alias`` to ``to`` (400 for a bad plan, 409 while one runs)."""
        await self._service.show(alias)  # 404 for an unknown alias
        versions = self._router.aliases[alias].versions
        current = self._router.policy(alias)
        running = self._rollouts.get(alias)
        if running is not None and running.state == "running":
            raise Conflict(f"a rollout of '{alias}' is running", code="rollout_running")
        if to not in versions:
            raise InvalidField(f"'{to[:80]}' is not a version of '{alias}'", param="to")
        if not steps or any(not 0 < p <= 100 for p in steps) or steps != sorted(steps) \
                or steps[-1] != 100:
            raise InvalidField("steps must rise within (0, 100] and end at 100",
                               param="steps")
        if base is None:
            others = {n: w for n, w in current.weights.items() if n != to and w > 0}
            if not others:
                raise InvalidField(f"'{to}' already has all the traffic", param="to")
            base = max(others, key=lambda n: others[n])
        if base == to or base not in versions:
            raise InvalidField("base must be another version of the alias", param="base")
        longest = hold_s * self._bounds.max_hold_factor
        if longest > self._measurements.retention_s:
            raise InvalidField(
                f"a hold may last {longest:g} s (hold_s x max_hold_factor); measurements "
                f"are kept {self._measurements.retention_s:g} s (measure_retention_s)",
                param="hold_s")
        rollout = Rollout(alias, to, base, list(steps), hold_s, current)
        self._rollouts[alias] = rollout
        rollout.task = asyncio.get_running_loop().create_task(
            self._run(rollout), name=f"rollout-{alias}")
        return rollout

    async def cancel(self, alias: str) -> Rollout:
        """Stop a running rollout where it is (the split stays as it was last written)."""
        rollout = self.get(alias)
        if rollout.task is not None and not rollout.task.done():
            rollout.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rollout.task
        return rollout

    async def aclose(self) -> None:
        for alias in list(self._rollouts):
            await self.cancel(alias)

    def _decide(self, rollout: Rollout, step: int, action: str, reason: str,
                new: Window | None = None, base: Window | None = None) -> None:
        percent = rollout.steps[step] if step < len(rollout.steps) else 100.0
        decision = Decision(time.time(), step, percent, action, reason,
                            new.public() if new else {}, base.public() if base else {})
        rollout.decisions.append(decision)
        log.info("rollout of %s to %s, step %d (%g %%): %s: %s", rollout.alias, rollout.to,
                 step, percent, action, reason)

    async def _run(self, rollout: Rollout) -> None:
        alias, step = rollout.alias, 0
        try:
            for step, percent in enumerate(rollout.steps):
                weights = {rollout.to: 100.0} if percent >= 100 else {
                    rollout.base: 100.0 - percent, rollout.to: percent}
                rollout.written = VersionPolicy(weights, rollout.before.shadow)
                await self._service.set(alias, rollout.written)
                self._decide(rollout, step, "step", f"split {weights}")
                breach = await self._hold(rollout, step)
                if breach is not None:
                    await self._service.set(alias, rollout.before)
                    rollout.state = "rolled_back"
                    self._decide(rollout, step, "rollback", breach)
                    return
            rollout.state = "done"
            self._decide(rollout, step, "done", f"{rollout.to} has all the traffic")
        except _Superseded:
            rollout.state = "superseded"
            self._decide(rollout, step, "superseded", "the policy was changed by another "
                         "call; the rollout stops and leaves it")
        except asyncio.CancelledError:
            rollout.state = "cancelled"
            self._decide(rollout, step, "cancelled", "cancelled through the admin API")
            raise
        except SluiceError as exc:
            rollout.state = "failed"
            self._decide(rollout, step, "failed", exc.message)

    async def _hold(self, rollout: Rollout, step: int) -> str | None:
        """None when the step held within bounds; else why it did not."""
        bounds = self._bounds
        start = time.monotonic()
        since = math.floor(time.time())
        deadline, extended = start + rollout.hold_s, False
        while True:
            now = time.monotonic()
            await asyncio.sleep(max(0.0, min(bounds.check_interval_s, deadline - now)))
            if self._router.policy(rollout.alias) != rollout.written:
                raise _Superseded
            until = math.floor(time.time()) + 1
            new = await self._measurements.window(rollout.alias, rollout.to, since, until)
            base = await self._measurements.window(rollout.alias, rollout.base, since, until)
            breach = self._breach(new, base)
            if breach is not None:
                self._decide(rollout, step, "breach", breach, new, base)
                return breach
            if time.monotonic() < deadline:
                continue
            if new.requests >= bounds.min_requests:
                self._decide(rollout, step, "promote", "within bounds", new, base)
                return None
            if time.monotonic() >= start + rollout.hold_s * bounds.max_hold_factor:
                return (f"only {new.requests} requests on {rollout.to} in "
                        f"{bounds.max_hold_factor:g} holds; {bounds.min_requests} needed")
            if not extended:
                self._decide(rollout, step, "extend", f"{new.requests} of "
                             f"{bounds.min_requests} requests", new, base)
                extended = True
            deadline = min(now + bounds.check_interval_s,
                           start + rollout.hold_s * bounds.max_hold_factor)

    def _breach(self, new: Window, base: Window) -> str | None:
        return breach(self._bounds, new, base)


def breach(bounds: RolloutSettings, new: Window, base: Window) -> str | None:
    """Why ``new`` is out of bounds against ``base`` (None: it is not, or it has too
    few requests to judge yet). The TTFT p99s are compared once each side has
    ``min_requests`` TTFTs."""
    if new.requests < bounds.min_requests:
        return None
    if new.error_rate > bounds.max_error_rate:
        return (f"error rate {new.error_rate:.1%} over {new.requests} requests > "
                f"{bounds.max_error_rate:.1%}")
    new_p99, base_p99 = new.ttft_p99_s, base.ttft_p99_s
    if new_p99 is None or base_p99 is None \
            or min(new.ttft_samples, base.ttft_samples) < bounds.min_requests:
        return None
    limit = base_p99 * bounds.max_ttft_p99_ratio + bounds.ttft_p99_slack_s
    if new_p99 > limit:
        return (f"TTFT p99 {new_p99 * 1000:.0f} ms > {bounds.max_ttft_p99_ratio:g} x the "
                f"base's {base_p99 * 1000:.0f} ms + {bounds.ttft_p99_slack_s * 1000:.0f} ms")
    return None
