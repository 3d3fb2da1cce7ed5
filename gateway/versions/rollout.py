"""Guarded progressive rollout: move an alias to a new version step by step, promoting
while it stays within bounds and rolling back at once when it does not.

A rollout (``POST /admin/versions/{alias}/rollout``: ``to``, ``steps`` in percent,
``hold_s``) writes at each step the split (``100 - p`` on the base version, ``p`` on
the new one), then holds: every ``check_interval_s`` it compares the new version's
requests since the step began with the base version's (error rate, TTFT p99; the
store's :class:`~gateway.stores.VersionMeasurements`, which count every replica's
requests), and a breach rolls the alias back to the policy it had before the rollout,
at once. When the hold ends within bounds (with at least ``min_requests`` judged) the
next step follows; after the last, the rollout is done. A step's window starts at the
whole second its split was written in.

The rollout lives in the store (:class:`~gateway.stores.RolloutRecords`): the plan, the
policy before it, its state, the current step and when it began, and every decision
with the figures it was made on. The replica that took the call drives it, holding a
lease (``3 x check_interval_s``) that each check renews. Every replica watches: one
that finds a running rollout's lease lapsed (its driver's replica died or hung) takes
the lease and resumes the rollout at its recorded step and hold start. Any replica
answers for it from the store, and a cancel is written there: the driver stops at its
next check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from gateway.config.versions import RolloutSettings
from gateway.core.errors import AliasNotFound, Conflict, InvalidField, SluiceError
from gateway.stores import VersionMeasurements, VersionPolicy, Window
from gateway.stores.protocols import RolloutRecord, RolloutRecords
from gateway.versions.router import VersionRouter, policy_json
from gateway.versions.service import VersionService

log = logging.getLogger("sluice.rollout")

ACTIONS = ("step", "promote", "extend", "breach", "rollback", "resume", "superseded", "done",
           "cancelled", "failed")
"""A decision's ``action``: ``step`` (split written), ``promote`` (hold passed),
``extend`` (too few requests yet), ``breach``, ``rollback``, ``resume`` (another
replica took the rollout over), ``superseded``, ``done``, ``cancelled``, ``failed``."""


def public(record: RolloutRecord) -> dict[str, Any]:
    """A rollout as the admin API shows it."""
    return {"alias": record.alias, "to": record.to, "base": record.base,
            "steps": list(record.steps), "hold_s": record.hold_s, "state": record.state,
            "before": policy_json(record.before), "step": record.step,
            "step_started_at": record.step_started, "owner": record.owner,
            "decisions": list(record.decisions)}


def split(record: RolloutRecord, step: int) -> VersionPolicy:
    """The policy of ``step``: its share on the new version, the rest on the base."""
    percent = record.steps[step]
    weights = {record.to: 100.0} if percent >= 100 else {
        record.base: 100.0 - percent, record.to: percent}
    return VersionPolicy(weights, record.before.shadow)


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


class _Stopped(Exception):
    """This replica no longer drives the rollout: cancelled, or taken over."""


class _Superseded(Exception):
    """The alias's policy is no longer the one the rollout wrote."""


class Rollouts:
    """The guarded rollouts this replica drives (at most one per alias), over the
    rollout records every replica shares."""

    def __init__(self, service: VersionService, router: VersionRouter,
                 measurements: VersionMeasurements, records: RolloutRecords,
                 settings: RolloutSettings, *, clock: Callable[[], float] = time.time,
                 replica: str | None = None) -> None:
        self._service = service
        self._router = router
        self._measurements = measurements
        self._records = records
        self._bounds = settings
        self._clock = clock
        self.replica = replica or f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        """This replica's id, as a rollout's ``owner`` (the process id first)."""
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._watch_failed = False

    @property
    def lease_s(self) -> float:
        return 3 * self._bounds.check_interval_s

    def driving(self, alias: str) -> bool:
        return alias in self._drivers

    async def get(self, alias: str) -> RolloutRecord:
        record = await self._records.get(alias)
        if record is None:
            raise AliasNotFound(f"alias '{alias[:100]}' has had no rollout",
                                code="no_rollout")
        return record

    async def start(self, alias: str, to: str, steps: list[float], hold_s: float,
                    base: str | None = None) -> RolloutRecord:
        """Begin a rollout of ``alias`` to ``to`` (400 for a bad plan, 409 while one
        runs on any replica)."""
        await self._service.show(alias)  # 404 for an unknown alias
        versions = self._router.aliases[alias].versions
        current = self._router.policy(alias)
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
        now = self._clock()
        record = RolloutRecord(alias, to, base, tuple(steps), hold_s, current, started_at=now,
                               step_started=now, owner=self.replica)
        record = replace(record, written=split(record, 0))
        record = replace(record, decisions=(self._decision(record, "step", self._says(record)),))
        if self.driving(alias) or not await self._records.start(record, self.replica,
                                                                self.lease_s):
            raise Conflict(f"a rollout of '{alias}' is running", code="rollout_running")
        self._log(record, record.decisions)
        self._spawn(record, resumed=False)
        return record

    async def cancel(self, alias: str) -> RolloutRecord:
        """Stop a running rollout where it is (the split stays as it was last written):
        marked in the store, so its driver stops wherever it runs."""
        record = await self.get(alias)
        decision = self._decision(record, "cancelled", "cancelled through the admin API")
        if await self._records.cancel(alias, decision):
            self._log(record, [decision])
        task = self._drivers.get(alias)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return await self.get(alias)

    async def adopt(self) -> list[str]:
        """Take over every running rollout whose lease lapsed; the aliases taken."""
        taken: list[str] = []
        for alias in self._router.aliases:
            if self.driving(alias):
                continue
            try:
                if not await self._records.take(alias, self.replica, self.lease_s):
                    continue
                record = await self._records.get(alias)
                if record is None or record.state != "running":
                    await self._records.release(alias, self.replica)
                    continue
            except SluiceError as exc:  # the store is out of reach: once per outage
                if not self._watch_failed:
                    log.warning("rollout watch failed (until the store answers): %s",
                                exc.message)
                self._watch_failed = True
                return taken
            taken.append(alias)
            self._spawn(record, resumed=True)
        if self._watch_failed:
            log.info("rollout watch: the store answers again")
            self._watch_failed = False
        return taken

    async def run_watch(self) -> None:
        """:meth:`adopt` every ``check_interval_s``, forever (a lifespan task)."""
        while True:
            await asyncio.sleep(self._bounds.check_interval_s)
            await self.adopt()

    async def aclose(self) -> None:
        """Stop driving (at shutdown), leaving each rollout running in the store with
        its lease given back: another replica takes it over at its next watch."""
        for alias, task in list(self._drivers.items()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(SluiceError):
                await self._records.release(alias, self.replica)

    def _spawn(self, record: RolloutRecord, *, resumed: bool) -> None:
        task = asyncio.get_running_loop().create_task(
            self._drive(record, resumed), name=f"rollout-{record.alias}")
        self._drivers[record.alias] = task
        task.add_done_callback(lambda done: self._forget(record.alias, done))

    def _forget(self, alias: str, task: asyncio.Task[None]) -> None:
        if self._drivers.get(alias) is task:
            del self._drivers[alias]

    def _decision(self, record: RolloutRecord, action: str, reason: str,
                  new: Window | None = None, base: Window | None = None) -> dict[str, Any]:
        step = min(record.step, len(record.steps) - 1)
        return {"at": self._clock(), "step": record.step, "percent": record.steps[step],
                "action": action, "reason": reason, "new": new.public() if new else {},
                "base": base.public() if base else {}}

    @staticmethod
    def _says(record: RolloutRecord) -> str:
        assert record.written is not None
        return f"split {record.written.weights}"

    def _log(self, record: RolloutRecord, decisions: Sequence[dict[str, Any]]) -> None:
        for d in decisions:
            log.info("rollout of %s to %s, step %d (%g %%): %s: %s", record.alias, record.to,
                     d["step"], d["percent"], d["action"], d["reason"])

    async def _save(self, record: RolloutRecord, *decisions: dict[str, Any]
                    ) -> RolloutRecord:
        """Write ``record`` with ``decisions`` (renewing the lease); :class:`_Stopped`
        when this replica may no longer."""
        held = await self._records.update(record, self.replica, self.lease_s, decisions)
        if held == "lost":
            raise _Stopped("another replica took its lease")
        if held == "stopped":
            raise _Stopped("it is no longer running")
        self._log(record, decisions)
        return replace(record, decisions=(*record.decisions, *decisions))

    async def _drive(self, record: RolloutRecord, resumed: bool) -> None:
        alias = record.alias
        try:
            if resumed:
                record = await self._save(replace(record, owner=self.replica), self._decision(
                    record, "resume", f"replica {self.replica} took over from "
                    f"{record.owner or 'another'}, whose lease lapsed"))
            await self._run(record)
        except _Stopped as exc:
            log.info("rollout of %s: no longer driven here (%s)", alias, exc)
        except SluiceError as exc:  # its end could not be written: another replica resumes
            log.warning("rollout of %s: stopped driving: %s", alias, exc.message)

    async def _run(self, record: RolloutRecord) -> None:
        try:
            await self._apply(record)
            while True:
                record, reason, new, base = await self._hold(record)
                if reason is not None:
                    record = await self._save(record, self._decision(
                        record, "breach", reason, new, base))
                    await self._service.set(record.alias, record.before)
                    await self._save(replace(record, state="rolled_back"),
                                     self._decision(record, "rollback", reason))
                    return
                promoted = self._decision(record, "promote", "within bounds", new, base)
                if record.step + 1 >= len(record.steps):
                    await self._save(replace(record, state="done"), promoted, self._decision(
                        record, "done", f"{record.to} has all the traffic"))
                    return
                step = record.step + 1
                record = replace(record, step=step, step_started=self._clock(),
                                 written=split(record, step))
                record = await self._save(record, promoted,
                                          self._decision(record, "step", self._says(record)))
                await self._apply(record)
        except _Superseded:
            await self._save(replace(record, state="superseded"), self._decision(
                record, "superseded", "the policy was changed by another call; the "
                "rollout stops and leaves it"))
        except SluiceError as exc:
            await self._save(replace(record, state="failed"),
                             self._decision(record, "failed", exc.message))

    async def _apply(self, record: RolloutRecord) -> None:
        """Put the step's split in force, unless it is already (a rollout resumed after
        its split was written): only over the policy before it, else :class:`_Superseded`."""
        stored = await self._router.store.get(record.alias)
        if stored == record.written:
            await self._router.reload(record.alias)
            return
        previous = record.before if record.step == 0 else split(record, record.step - 1)
        if stored is not None and stored != previous:
            raise _Superseded
        assert record.written is not None
        await self._service.set(record.alias, record.written)

    async def _superseded(self, record: RolloutRecord) -> bool:
        """Whether the alias's policy is no longer the step's split (a replica that has
        not applied a change yet asks the store)."""
        if self._router.policy(record.alias) == record.written:
            return False
        await self._router.reload(record.alias)
        return self._router.policy(record.alias) != record.written

    async def _hold(self, record: RolloutRecord
                    ) -> tuple[RolloutRecord, str | None, Window, Window]:
        """Hold the step: ``(record, None, new, base)`` when it held within bounds with
        enough requests, ``(record, why, new, base)`` when it did not."""
        bounds, alias = self._bounds, record.alias
        start = record.step_started
        deadline = start + record.hold_s
        longest = start + record.hold_s * bounds.max_hold_factor
        extended = any(d["action"] == "extend" and d["step"] == record.step
                       for d in record.decisions)
        since = math.floor(start)
        while True:
            await asyncio.sleep(max(0.0, min(bounds.check_interval_s,
                                             deadline - self._clock())))
            try:
                record = await self._save(record)  # renews the lease; stops if cancelled
            except SluiceError as exc:  # the store is out of reach: judge when it is back
                log.warning("rollout of %s: check skipped: %s", alias, exc.message)
                await asyncio.sleep(bounds.check_interval_s)
                continue
            if await self._superseded(record):
                raise _Superseded
            now = self._clock()
            until = math.floor(now) + 1
            new = await self._measurements.window(alias, record.to, since, until)
            base = await self._measurements.window(alias, record.base, since, until)
            reason = breach(bounds, new, base)
            if reason is not None:
                return record, reason, new, base
            if now < deadline:
                continue
            if new.requests >= bounds.min_requests:
                return record, None, new, base
            if now >= longest:
                return record, (f"only {new.requests} requests on {record.to} in "
                                f"{bounds.max_hold_factor:g} holds; {bounds.min_requests} "
                                "needed"), new, base
            if not extended:
                record = await self._save(record, self._decision(
                    record, "extend", f"{new.requests} of {bounds.min_requests} requests",
                    new, base))
                extended = True
            deadline = min(now + bounds.check_interval_s, longest)
