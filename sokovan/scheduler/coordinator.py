"""The coordinator: claims a handler, opens its run, lets it plan, and closes the run."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sokovan.errors import DispatchError, UnknownHandler
from sokovan.ports import Claims, FanOutTracking, HandlerKicker, Ledger
from sokovan.scheduler.handlers.base import FollowUps, HandlerRuntime, Plan, moved_of
from sokovan.scheduler.leases import LEASE_LAPSED, kept, lost, take_over
from sokovan.scheduler.outcomes import record_outcomes
from sokovan.types import ItemOutcome, Operation, RunId, RunRecord, RunStatus, RunTrigger, utcnow

log = logging.getLogger(__name__)

PAST_DEADLINE = "abandoned: past its deadline; unfinished targets go to the next run"

__all__ = ["LEASE_LAPSED", "Coordinator", "Plan", "RunReport"]


@dataclass(frozen=True, slots=True)
class RunReport:
    """What a start of a handler came to."""

    handler: str
    run_id: RunId | None
    status: RunStatus
    note: str | None = None


class Coordinator:
    """Runs handlers one at a time each, and records every run in the ledger."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        claims: Claims,
        kicker: HandlerKicker,
        tracker: FanOutTracking,
        claim_lifetime: float,
        run_deadline: float,
        budgets: Mapping[str, int] | None = None,
        record_empty_beat_runs: bool = True,
    ) -> None:
        self.ledger = ledger
        self.claims = claims
        self.kicker = kicker
        self.tracker = tracker
        self.claim_lifetime = claim_lifetime
        self.run_deadline = run_deadline
        self.budgets = dict(budgets or {})
        self.record_empty_beat_runs = record_empty_beat_runs
        self.handlers: dict[str, HandlerRuntime] = {}

    def register(self, spec: HandlerRuntime) -> None:
        self.handlers[spec.name] = spec

    def spec(self, handler: str) -> HandlerRuntime:
        try:
            return self.handlers[handler]
        except KeyError:
            known = ", ".join(sorted(self.handlers))
            raise UnknownHandler(f"unknown handler {handler!r}; known: {known}") from None

    async def run(
        self,
        handler: str,
        trigger: RunTrigger = RunTrigger.MANUAL,
        scope: Sequence[str] | None = None,
        budget: int | None = None,
    ) -> RunReport:
        """Starts one run of `handler` unless it is paused or already running."""
        spec = self.spec(handler)
        if await self.ledger.is_paused(handler):
            log.info("handler %s is paused; %s start ignored", handler, trigger)
            return RunReport(handler, None, RunStatus.SKIPPED, "paused")
        token = await self.claims.claim(spec.lock_id, self.claim_lifetime)
        if token is None:
            if trigger != RunTrigger.BEAT:
                # Event and API starts must not wait for the next beat tick.
                await self.claims.mark_pending(spec.lock_id, self.claim_lifetime)
            log.info("handler %s already running (claim %s held); skipped", handler, spec.lock_id)
            return RunReport(handler, None, RunStatus.SKIPPED, "another run holds the claim")
        # Holding the lease now means any run still open under it lost its own: abandon them.
        await self._abandon_lapsed(spec.lock_id)
        try:
            run_id = await self.ledger.open_run(
                handler,
                trigger,
                scope=list(scope) if scope else None,
                claim_token=token,
                deadline_sec=self.run_deadline,
                operation=None
                if spec.declaration.operation is None
                else str(spec.declaration.operation),
            )
        except Exception:
            # Without a run row nothing would release the claim before it lapses.
            await self.claims.release(spec.lock_id, token)
            raise
        limit = self.budgets.get(handler, 0) if budget is None else budget
        if limit:
            unit = spec.declaration.targets.unit
            log.info("run %s of %s takes at most %d %s", run_id, handler, limit, unit)
        try:
            async with kept(self.claims, spec.lock_id, token, self.claim_lifetime):
                plan = await spec.plan(run_id, scope, limit)
        except DispatchError as e:
            log.warning("run %s of %s could not dispatch: %s", run_id, handler, e)
            await self._finish(run_id, spec.lock_id, token, error=f"dispatch failed: {e}")
            return RunReport(handler, run_id, RunStatus.FAILED, str(e))
        except Exception as e:
            log.exception("run %s of %s failed while planning", run_id, handler)
            await self._finish(run_id, spec.lock_id, token, error=f"{type(e).__name__}: {e}")
            return RunReport(handler, run_id, RunStatus.FAILED, str(e))
        await self.ledger.update_run(run_id, requested=plan.requested, note=plan.note)
        follow_ups = list(plan.follow_ups)
        if plan.outcomes:
            # What planning learned is recorded with its declared kernel moves, as a batch is.
            _, outcomes = await record_outcomes(
                self.ledger, spec.declaration.transitions, run_id, plan.outcomes
            )
            completer = spec.complete.get(None)
            if completer is not None:
                follow_ups.extend(await completer(run_id, outcomes, moved_of(outcomes)))
        await self._follow_up(follow_ups)
        if plan.dispatched and not await self.tracker.planned(run_id):
            return RunReport(handler, run_id, RunStatus.RUNNING, plan.note)
        if trigger == RunTrigger.BEAT and self._idle(plan) and not self.record_empty_beat_runs:
            # A tick that found nothing to do is not worth a row; it is logged instead.
            await self.ledger.discard_run(run_id)
            await self._release(spec.lock_id, token, handler)
            log.debug("beat tick of %s found nothing to do", handler)
            return RunReport(handler, None, RunStatus.SUCCEEDED, "nothing to do")
        record = await self._finish(
            run_id,
            spec.lock_id,
            token,
            note=plan.note,
            bulk_ok=plan.bulk_ok,
            held=plan.held is not None,
            partial=plan.partial is not None,
        )
        status = record.status if record else RunStatus.SUCCEEDED
        return RunReport(handler, run_id, status, plan.note)

    async def complete(
        self, run_id: RunId, operation: Operation, outcomes: Sequence[ItemOutcome]
    ) -> RunRecord | None:
        """Chord body: lets the handler end what its batches finished, then counts and closes
        the run. The batches recorded every outcome and moved every kernel already."""
        run = await self.ledger.get_run(run_id)
        spec = self.spec(run.handler)
        if run.status != RunStatus.RUNNING:
            # Abandoned (its lease lapsed) or already closed (a redelivered body): the batches
            # kept what came as evidence; the next run re-planned and counts those kernels.
            log.warning("run %s is %s: its fan-out's outcomes kept as evidence", run_id, run.status)
            return None
        completer = spec.complete.get(operation)
        if completer is not None:
            await self._follow_up(await completer(run_id, outcomes, moved_of(outcomes)))
        if not await self.tracker.completed(run_id):
            return None  # other fan-outs of this run have yet to report
        return await self._finish(run_id, spec.lock_id, run.claim_token)

    async def settle(self, run_id: RunId, outcomes: Sequence[ItemOutcome]) -> list[ItemOutcome]:
        """Records outcomes a planner settled without an agent call, with their declared
        kernel moves, in one transaction; returns them as recorded."""
        run = await self.ledger.get_run(run_id)
        transitions = self.spec(run.handler).declaration.transitions
        _, recorded = await record_outcomes(self.ledger, transitions, run_id, outcomes)
        return recorded

    async def fail(self, run_id: RunId, error: str) -> RunRecord | None:
        """Chord errback: a header task was lost; the run ends failed and frees its claim."""
        run = await self.ledger.get_run(run_id)
        spec = self.spec(run.handler)
        log.warning("run %s of %s failed: %s", run_id, run.handler, error)
        return await self._finish(run_id, spec.lock_id, run.claim_token, error=error)

    async def recover(self) -> list[RunId]:
        """Abandons runs whose lease lapsed, whose worker is gone (sokovan.scheduler.leases)
        or that are past their deadline, keeping their outcomes; returns their ids."""
        abandoned = []
        for run in await self.ledger.running():
            spec = self.handlers.get(run.handler)
            if spec is None or not run.claim_token:
                continue
            why = await lost(self.claims, spec.lock_id, run.claim_token, run.id)
            if why is None:
                continue
            # Abandoned under the lease, so no next run plans while this one is cleaned up;
            # if another start holds it now, that start abandons the run itself.
            token = await take_over(
                self.claims, spec.lock_id, run.claim_token, self.claim_lifetime, why
            )
            if token is None:
                continue
            try:
                if await self._abandon(run, why):
                    abandoned.append(run.id)
            finally:
                await self._release(spec.lock_id, token, run.handler)
            if abandoned and abandoned[-1] == run.id:
                await self._next_run(run.handler)
        for run in await self.ledger.running_past_deadline():
            if await self._abandon(run, PAST_DEADLINE):
                abandoned.append(run.id)
                await self._next_run(run.handler)
        return abandoned

    async def _next_run(self, handler: str) -> None:
        """An abandoned run's unfinished targets go to the next run now, not at the next
        tick; a paused handler starts nothing."""
        if not await self.ledger.is_paused(handler):
            await self._follow_up([(handler, None)])

    async def _abandon_lapsed(self, lock_id: str) -> None:
        """Abandons the open runs of every handler under `lock_id` (their lease is gone)."""
        names = {name for name, spec in self.handlers.items() if spec.lock_id == lock_id}
        for run in await self.ledger.running():
            if run.handler in names:
                await self._abandon(run, LEASE_LAPSED)

    async def _abandon(self, run: RunRecord, note: str) -> bool:
        """Marks one run abandoned; its recorded outcomes moved their kernels already."""
        if not await self.ledger.finish_as(run.id, RunStatus.ABANDONED, note):
            return False
        log.warning("run %s of %s %s", run.id, run.handler, note)
        spec = self.handlers.get(run.handler)
        if spec is None:
            return True
        if await self.ledger.is_paused(run.handler):
            # A paused handler does nothing more, recovery included; its next run re-plans.
            log.warning("handler %s is paused: run %s left as recorded", run.handler, run.id)
        else:
            # The unfinished targets are the next run's, which re-plans them from SQL.
            await self._complete_recorded(spec, run)
            if spec.abandoned is not None:
                try:
                    await self._follow_up(await spec.abandoned(run.id))
                except Exception:  # the next run and the deadlines deal with it instead
                    log.exception("run %s: cleaning up after it failed", run.id)
        if run.claim_token:
            await self.claims.release(spec.lock_id, run.claim_token)
        return True

    async def _complete_recorded(self, spec: HandlerRuntime, run: RunRecord) -> None:
        """What the chord body would have done for the batches an abandoned run recorded:
        the handler ends what they finished. Their kernels moved when they were recorded."""
        operation = next((op for op in spec.complete if str(op) == (run.operation or "")), None)
        if operation is None:
            return
        declared = spec.declaration.transitions
        outcomes = [
            dataclasses.replace(o, moved=o.verdict in declared)
            for o in await self.ledger.outcomes(run.id)
        ]
        if not outcomes:
            return
        try:
            await self._follow_up(
                await spec.complete[operation](run.id, outcomes, moved_of(outcomes))
            )
        except Exception:  # the next run re-plans from the database either way
            log.exception("run %s: ending what its batches finished failed", run.id)

    async def prune(self, older_than_days: int) -> int:
        """Deletes finished runs older than the retention."""
        cutoff = utcnow() - timedelta(days=older_than_days)
        return await self.ledger.prune(cutoff)

    async def _finish(
        self,
        run_id: RunId,
        lock_id: str,
        token: str | None,
        *,
        error: str | None = None,
        note: str | None = None,
        bulk_ok: int = 0,
        held: bool = False,
        partial: bool = False,
    ) -> RunRecord | None:
        record = await self.ledger.close_run(
            run_id, error=error, note=note, bulk_ok=bulk_ok, held=held, partial=partial
        )
        if record is not None:
            await self._release(lock_id, token, record.handler)
        elif token:
            await self.claims.release(lock_id, token)
        return record

    async def _release(self, lock_id: str, token: str | None, handler: str) -> None:
        """Frees the claim and re-runs the handler if a start was turned away meanwhile."""
        if token:
            await self.claims.release(lock_id, token)
        if await self.claims.take_pending(lock_id):
            await self._follow_up([(handler, None)])

    @staticmethod
    def _idle(plan: Plan) -> bool:
        return not (plan.dispatched or plan.requested or plan.outcomes or plan.note)

    async def _follow_up(self, follow_ups: FollowUps) -> None:
        for handler, scope in follow_ups:
            try:
                await self.kicker.kick(handler, RunTrigger.EVENT, scope)
            except Exception as e:  # the level-triggered beat tick will pick it up
                log.warning("could not kick %s for %s: %s", handler, scope, e)
