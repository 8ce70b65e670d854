"""In-memory stubs of the ports, for unit tests and the test rig: they record what happened.

The SchedulerStore stub is sokovan/store_stub.py."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sokovan.errors import AgentUnavailable, PresenceUnavailable
from sokovan.types import (
    AgentBatch,
    AgentId,
    HealthCheckStatus,
    ImageConfig,
    ItemOutcome,
    KernelId,
    KernelMove,
    KernelPresence,
    KernelStatus,
    Operation,
    Recorded,
    RunId,
    RunStatus,
    RunTrigger,
    SessionId,
)

# A scripted answer: a value, an exception to raise, or a function of the call's args.
Answer = Any


@dataclass
class Call:
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


class FakeAgentClient:
    """An agent that answers from a script and records every call."""

    def __init__(self, agent_id: AgentId, delay: float = 0.0) -> None:
        self.agent_id = agent_id
        self.delay = delay
        self.calls: list[Call] = []
        self.closed = 0
        self._script: dict[tuple[str, Any], Answer] = {}
        self._next_port = 30000

    def script(self, method: str, answer: Answer, key: Any = None) -> None:
        """Sets the answer of `method` (for one kernel id or image when `key` is given)."""
        self._script[(method, key)] = answer

    def calls_to(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    async def _answer(self, method: str, key: Any, default: Answer, *args: Any) -> Any:
        if self.delay:
            await asyncio.sleep(self.delay)
        answer = self._script.get((method, key), self._script.get((method, None), default))
        if isinstance(answer, BaseException):
            raise answer
        if callable(answer):
            result = answer(*args)
            if asyncio.iscoroutine(result):
                result = await result
            return result
        return answer

    async def check_and_pull(self, image_configs: Mapping[str, ImageConfig]) -> Mapping[str, str]:
        self.calls.append(Call("check_and_pull", (dict(image_configs),)))
        default = {name: "cached" for name in image_configs}
        return await self._answer("check_and_pull", None, default, image_configs)  # type: ignore[no-any-return]

    async def create_kernels(
        self,
        session_id: SessionId,
        kernel_ids: Sequence[KernelId],
        kernel_configs: Sequence[Mapping[str, Any]],
        cluster_info: Mapping[str, Any],
        kernel_image_refs: Mapping[KernelId, ImageConfig],
    ) -> list[dict[str, Any]]:
        args = (session_id, list(kernel_ids), list(kernel_configs), cluster_info, kernel_image_refs)
        self.calls.append(Call("create_kernels", args))
        default = [{"id": str(k), "container_id": f"c-{k}"} for k in kernel_ids]
        return await self._answer("create_kernels", None, default, *args)  # type: ignore[no-any-return]

    async def destroy_kernel(
        self,
        kernel_id: KernelId,
        session_id: SessionId,
        reason: str,
        suppress_events: bool = False,
    ) -> None:
        self.calls.append(
            Call(
                "destroy_kernel",
                (kernel_id, session_id, reason),
                {"suppress_events": suppress_events},
            )
        )
        await self._answer("destroy_kernel", kernel_id, None, kernel_id)

    async def check_running(self, kernel_id: KernelId) -> bool | None:
        self.calls.append(Call("check_running", (kernel_id,)))
        return await self._answer("check_running", kernel_id, True, kernel_id)  # type: ignore[no-any-return]

    async def health(self) -> Mapping[str, Any]:
        self.calls.append(Call("health", ()))
        default = {"status": "ok", "component": "agent", "agent_id": str(self.agent_id)}
        return await self._answer("health", None, default)  # type: ignore[no-any-return]

    async def create_local_network(self, network_name: str) -> None:
        self.calls.append(Call("create_local_network", (network_name,)))
        await self._answer("create_local_network", network_name, None, network_name)

    async def assign_port(self) -> int:
        self.calls.append(Call("assign_port", ()))
        self._next_port += 1
        return await self._answer("assign_port", None, self._next_port)  # type: ignore[no-any-return]

    async def get_logs(self, kernel_id: KernelId) -> str:
        self.calls.append(Call("get_logs", (kernel_id,)))
        return await self._answer("get_logs", kernel_id, "", kernel_id)  # type: ignore[no-any-return]

    async def close(self) -> None:
        self.closed += 1


class FakeAgentClientPool:
    """Lends FakeAgentClients by id; an unknown id is unavailable."""

    def __init__(self, clients: Mapping[AgentId, FakeAgentClient] | None = None) -> None:
        self.clients: dict[AgentId, FakeAgentClient] = dict(clients or {})
        self.acquired: list[AgentId] = []
        self.closed_all = 0

    def add(self, agent_id: str, delay: float = 0.0) -> FakeAgentClient:
        client = FakeAgentClient(AgentId(agent_id), delay=delay)
        self.clients[AgentId(agent_id)] = client
        return client

    @asynccontextmanager
    async def acquire(self, agent_id: AgentId) -> AsyncIterator[FakeAgentClient]:
        self.acquired.append(agent_id)
        client = self.clients.get(agent_id)
        if client is None:
            raise AgentUnavailable(f"agent {agent_id} is not reachable")
        yield client

    async def close_all(self) -> None:
        self.closed_all += 1
        for client in self.clients.values():
            await client.close()


class FakePresence:
    """Presence verdicts set by the test; records each batch read."""

    def __init__(self, statuses: Mapping[KernelId, KernelPresence] | None = None) -> None:
        self.statuses: dict[KernelId, KernelPresence] = dict(statuses or {})
        self.batches: list[list[KernelId]] = []
        # The agent ids passed with each batch (None: no agent gets a last-check stamp).
        self.agent_batches: list[list[AgentId | None] | None] = []
        # The sweep's first pass: the kernels of each page scanned, and the agents stamped.
        self.scans: list[list[KernelId]] = []
        self.agent_scans: list[list[AgentId]] = []
        self.unavailable = False

    async def check_kernel_presence_status_batch(
        self, kernel_ids: Sequence[KernelId], agent_ids: Sequence[AgentId | None] | None = None
    ) -> dict[KernelId, KernelPresence]:
        self.batches.append(list(kernel_ids))
        self.agent_batches.append(None if agent_ids is None else list(agent_ids))
        if self.unavailable:
            raise PresenceUnavailable("presence store unreadable (fake)")
        return {k: self.statuses[k] for k in kernel_ids if k in self.statuses}

    async def scan_for_suspects(
        self, kernel_ids: Sequence[str], agent_ids: Collection[AgentId] = ()
    ) -> dict[int, KernelPresence | None]:
        ids = [KernelId(uuid.UUID(k)) for k in kernel_ids]
        self.scans.append(ids)
        self.agent_scans.append(sorted(agent_ids))
        if self.unavailable:
            raise PresenceUnavailable("presence store unreadable (fake)")
        out: dict[int, KernelPresence | None] = {}
        for position, kernel_id in enumerate(ids):
            seen = self.statuses.get(kernel_id)
            if seen is None or seen.presence == HealthCheckStatus.STALE:
                out[position] = seen
        return out


Executor = Callable[[Operation, AgentBatch], Awaitable[list[ItemOutcome]]]


@dataclass
class FanOutRecord:
    run_id: RunId
    operation: Operation
    batches: list[AgentBatch]
    skipped: list[ItemOutcome]
    outcomes: list[ItemOutcome] = field(default_factory=list)

    @property
    def succeeded(self) -> int:
        return sum(1 for o in self.outcomes if o.ok and not o.skipped)

    @property
    def failed(self) -> int:
        return sum(1 for o in self.outcomes if not o.ok and not o.skipped)


class InProcessFanOut:
    """Runs every batch concurrently in this process, as the Celery chord would."""

    def __init__(self, execute: Executor) -> None:
        self._execute = execute
        self.records: list[FanOutRecord] = []

    async def dispatch(
        self,
        run_id: RunId,
        operation: Operation,
        batches: Sequence[AgentBatch],
        skipped: Sequence[ItemOutcome] = (),
    ) -> str:
        record = FanOutRecord(run_id, operation, list(batches), list(skipped))
        self.records.append(record)
        results = await asyncio.gather(*(self._execute(operation, b) for b in batches))
        record.outcomes = [o for batch in results for o in batch] + list(skipped)
        return f"inprocess-{len(self.records)}"


class FakeSessionRecorder:
    """Records the network ids and error infos the launcher stores per session."""

    def __init__(self) -> None:
        self.network_ids: dict[SessionId, str | None] = {}
        self.network_id_calls: list[tuple[SessionId, str | None]] = []
        self.error_infos: dict[SessionId, list[Mapping[str, Any]]] = {}

    async def update_session_network_id(
        self, session_id: SessionId, network_id: str | None
    ) -> None:
        self.network_id_calls.append((session_id, network_id))
        self.network_ids[session_id] = network_id

    async def update_session_error_info(
        self, session_id: SessionId, error_info: Mapping[str, Any]
    ) -> None:
        self.error_infos.setdefault(session_id, []).append(dict(error_info))


class FakeSecretStore:
    """Keeps SSH keypairs in memory; records which sessions were read."""

    def __init__(self) -> None:
        self.keypairs: dict[SessionId, tuple[str, str]] = {}
        self.reads: list[SessionId] = []

    async def put_ssh_keypair(
        self, session_id: SessionId, private_key: str, public_key: str
    ) -> None:
        self.keypairs[session_id] = (private_key, public_key)

    async def get_ssh_keypair(self, session_id: SessionId) -> tuple[str, str]:
        self.reads.append(session_id)
        if session_id not in self.keypairs:
            from sokovan.errors import NotFound

            raise NotFound(f"no SSH keypair for session {session_id}")
        return self.keypairs[session_id]


class FakeNetworkPlugin:
    """A network driver that records created and destroyed networks."""

    def __init__(self, prefix: str = "net", options: Mapping[str, Any] | None = None) -> None:
        self.prefix = prefix
        self.options = dict(options or {})
        self.created: list[str] = []
        self.destroyed: list[str] = []

    async def create_network(self, identifier: str) -> Mapping[str, Any]:
        self.created.append(identifier)
        network_id = f"{self.prefix}-{identifier}"
        return {"network_id": network_id, "options": {**self.options, "network_name": network_id}}

    async def destroy_network(self, network_id: str) -> None:
        self.destroyed.append(network_id)


class RefusingFanOut:
    """A FanOut for code paths that must not dispatch: any dispatch is an error."""

    def __init__(self, why: str = "this path dispatches nothing") -> None:
        self.why = why

    async def dispatch(
        self,
        run_id: RunId,
        operation: Operation,
        batches: Sequence[AgentBatch],
        skipped: Sequence[ItemOutcome] = (),
    ) -> str:
        raise AssertionError(self.why)


class RecordingKicker:
    """HandlerKicker that records what it was asked to start."""

    def __init__(self) -> None:
        self.kicks: list[tuple[str, RunTrigger, list[str] | None]] = []

    async def kick(self, handler: str, trigger: RunTrigger, scope: Sequence[str] | None) -> None:
        self.kicks.append((handler, trigger, None if scope is None else list(scope)))


class InMemoryClaims:
    """Claims with a lifetime on a clock the test may move (`advance`)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._held: dict[str, tuple[str, float]] = {}
        self._pending: set[str] = set()
        self.released: list[str] = []
        # token -> pieces of work held; a test marks a token's holder dead with `kill`.
        self.holds: dict[str, int] = {}
        self.dead: set[str] = set()

    def kill(self, token: str) -> None:
        """The worker doing `token`'s work dies: a hold it had is now a gone holder."""
        self.dead.add(token)

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def claim(self, lock_id: str, lifetime: float) -> str | None:
        held = self._held.get(lock_id)
        if held is not None and held[1] > self.now:
            return None
        token = uuid.uuid4().hex
        self._held[lock_id] = (token, self.now + lifetime)
        return token

    async def release(self, lock_id: str, token: str) -> bool:
        held = self._held.get(lock_id)
        if held is None or held[0] != token:
            return False
        del self._held[lock_id]
        self.released.append(lock_id)
        return True

    async def renew(self, lock_id: str, token: str, lifetime: float) -> bool:
        held = self._held.get(lock_id)
        if held is None or held[0] != token or held[1] <= self.now:
            return False
        self._held[lock_id] = (token, self.now + lifetime)
        return True

    async def holder(self, lock_id: str) -> str | None:
        held = self._held.get(lock_id)
        return held[0] if held is not None and held[1] > self.now else None

    async def mark_pending(self, lock_id: str, lifetime: float) -> None:
        self._pending.add(lock_id)

    async def take_pending(self, lock_id: str) -> bool:
        if lock_id in self._pending:
            self._pending.discard(lock_id)
            return True
        return False

    async def hold(self, token: str) -> None:
        self.holds[token] = self.holds.get(token, 0) + 1

    async def unhold(self, token: str) -> None:
        self.holds[token] = self.holds.get(token, 0) - 1

    async def gone_holders(self, token: str, run_id: int | None = None) -> list[str]:
        held = self.holds.get(token, 0) > 0
        return ["in-memory"] if held and token in self.dead else []


class InMemoryTracker:
    """FanOutTracking over plain counters."""

    def __init__(self) -> None:
        self.counts: dict[RunId, dict[str, int]] = {}

    def _bump(self, run_id: RunId, name: str, by: int = 1) -> bool:
        c = self.counts.setdefault(run_id, {"planned": 0, "expected": 0, "done": 0})
        c[name] += by
        return c["planned"] > 0 and c["done"] >= c["expected"]

    async def dispatched(self, run_id: RunId, by: int = 1) -> None:
        self._bump(run_id, "expected", by)

    async def completed(self, run_id: RunId) -> bool:
        return self._bump(run_id, "done")

    async def planned(self, run_id: RunId) -> bool:
        return self._bump(run_id, "planned")


class KernelMover(Protocol):
    """Where the in-memory ledger applies the kernel moves it records."""

    def transition_kernels(
        self,
        kernel_ids: Collection[KernelId],
        to: KernelStatus,
        allowed_from: Collection[KernelStatus],
        *,
        status_info: str | None = None,
        values: Mapping[KernelId, Mapping[str, Any]] | None = None,
    ) -> list[KernelId]: ...


class InMemoryKernelStates:
    """Kernel statuses in a dict, moved by the in-memory ledger; records every move."""

    def __init__(self, statuses: Mapping[KernelId, KernelStatus] | None = None) -> None:
        self.statuses: dict[KernelId, KernelStatus] = dict(statuses or {})
        self.info: dict[KernelId, str | None] = {}
        self.moves: list[tuple[list[KernelId], KernelStatus]] = []

    def transition_kernels(
        self,
        kernel_ids: Collection[KernelId],
        to: KernelStatus,
        allowed_from: Collection[KernelStatus],
        *,
        status_info: str | None = None,
        values: Mapping[KernelId, Mapping[str, Any]] | None = None,
    ) -> list[KernelId]:
        moved = [k for k in kernel_ids if self.statuses.get(k) in set(allowed_from)]
        for k in moved:
            self.statuses[k] = to
            if status_info is not None:
                self.info[k] = status_info
        self.moves.append((moved, to))
        return moved


@dataclass
class _Run:
    record: Any
    items: dict[str, ItemOutcome] = field(default_factory=dict)


class InMemoryLedger:
    """The Ledger port in memory: runs, their items and paused handlers; kernel moves go to
    `states`, with the outcomes that decided them."""

    def __init__(self, states: KernelMover | None = None) -> None:
        from sokovan.types import RunRecord, utcnow

        self.states = states if states is not None else InMemoryKernelStates()
        self._record = RunRecord
        self._now = utcnow
        self.runs: dict[RunId, _Run] = {}
        self.paused: set[str] = set()

    async def is_paused(self, handler: str) -> bool:
        return handler in self.paused

    async def open_run(
        self,
        handler: str,
        trigger: RunTrigger | str,
        *,
        requested: int = 0,
        scope: Any = None,
        claim_token: str | None = None,
        deadline_sec: float | None = None,
        status: RunStatus = RunStatus.RUNNING,
        note: str | None = None,
        operation: str | None = None,
    ) -> RunId:
        run_id = RunId(len(self.runs) + 1)
        now = self._now()
        deadline = None if not deadline_sec else now + timedelta(seconds=deadline_sec)
        self.runs[run_id] = _Run(
            self._record(
                run_id, handler, str(trigger), status, operation, requested, 0, 0, 0, now,
                None, deadline, None, claim_token, None, scope, note,
            )
        )  # fmt: skip
        return run_id

    async def update_run(self, run_id: RunId, **values: Any) -> None:
        run = self.runs[run_id]
        run.record = dataclasses.replace(run.record, **values)

    async def record_items(self, run_id: RunId, outcomes: Sequence[ItemOutcome]) -> int:
        items = self.runs[run_id].items
        new = [o for o in outcomes if o.item_id not in items]
        items.update((o.item_id, o) for o in new)
        return len(new)

    async def record_and_move(
        self, run_id: RunId, outcomes: Sequence[ItemOutcome], moves: Sequence[KernelMove] = ()
    ) -> Recorded:
        """Records outcomes and applies `moves` while the run is live, else keeps nothing."""
        if self.runs[run_id].record.status != RunStatus.RUNNING:
            return Recorded(counted=False, inserted=0, moved={})
        inserted = await self.record_items(run_id, outcomes)
        moved = {
            m.verdict: self.states.transition_kernels(
                m.kernel_ids, m.to, m.allowed_from, status_info=m.status_info
            )
            for m in moves
        }
        return Recorded(counted=True, inserted=inserted, moved=moved)

    def _counts(self, run_id: RunId, bulk_ok: int = 0) -> tuple[int, int, int]:
        items = self.runs[run_id].items.values()
        ok = sum(1 for o in items if o.ok and not o.skipped) + bulk_ok
        failed = sum(1 for o in items if not o.ok and not o.skipped)
        return ok, failed, sum(1 for o in items if o.skipped)

    async def close_run(
        self,
        run_id: RunId,
        *,
        error: str | None = None,
        note: str | None = None,
        bulk_ok: int = 0,
        held: bool = False,
        partial: bool = False,
    ) -> Any:
        from sokovan.db.ledger import closing_status

        run = self.runs[run_id]
        if run.record.status != RunStatus.RUNNING:
            return None
        ok, failed, skipped = self._counts(run_id, bulk_ok)
        status = closing_status(ok, failed, error, held, partial)
        run.record = dataclasses.replace(
            run.record,
            status=status,
            succeeded=ok,
            failed=failed,
            skipped=skipped,
            finished_at=self._now(),
            error=error,
            note=run.record.note if note is None else note,
        )
        return run.record

    async def finish_as(self, run_id: RunId, status: RunStatus, note: str) -> bool:
        run = self.runs[run_id]
        if run.record.status != RunStatus.RUNNING:
            return False
        run.record = dataclasses.replace(
            run.record, status=status, finished_at=self._now(), note=note
        )
        await self.recount(run_id)
        return True

    async def recount(self, run_id: RunId) -> None:
        ok, failed, skipped = self._counts(run_id)
        run = self.runs[run_id]
        run.record = dataclasses.replace(run.record, succeeded=ok, failed=failed, skipped=skipped)

    async def get_run(self, run_id: RunId) -> Any:
        from sokovan.errors import NotFound

        if run_id not in self.runs:
            raise NotFound(f"no run with id {run_id}")
        return self.runs[run_id].record

    async def outcomes(self, run_id: RunId) -> list[ItemOutcome]:
        return list(self.runs[run_id].items.values())

    async def running(self, handler: str | None = None) -> list[Any]:
        return [
            r.record
            for r in self.runs.values()
            if r.record.status == RunStatus.RUNNING and handler in (None, r.record.handler)
        ]

    async def running_past_deadline(self, now: datetime | None = None) -> list[Any]:
        now = now or self._now()
        return [
            r.record
            for r in self.runs.values()
            if r.record.status == RunStatus.RUNNING
            and r.record.deadline_at is not None
            and r.record.deadline_at < now
        ]

    async def discard_run(self, run_id: RunId) -> None:
        self.runs.pop(run_id, None)

    async def prune(self, older_than: datetime) -> int:
        old = [
            rid
            for rid, r in self.runs.items()
            if r.record.started_at < older_than and r.record.status != RunStatus.RUNNING
        ]
        for rid in old:
            del self.runs[rid]
        return len(old)


def stub_context(repository: Any, **adapters: Any) -> Any:
    """A HandlerContext over `repository` with a stub for every adapter not given."""
    from sokovan.config import Settings
    from sokovan.scheduler.handlers.base import HandlerContext
    from sokovan.scheduler.terminator import SessionTerminator

    pool = adapters.pop("pool", None) or FakeAgentClientPool()
    fanout = adapters.pop("fanout", None) or RefusingFanOut("this test dispatches nothing")
    presence = adapters.pop("presence", None) or FakePresence()
    return HandlerContext(
        settings=adapters.pop("settings", None) or Settings(),
        repository=repository,
        terminator=adapters.pop("terminator", None) or SessionTerminator(pool, presence, fanout),
        pool=pool,
        secrets=adapters.pop("secrets", None) or FakeSecretStore(),
        fanout=fanout,
        **adapters,
    )


class FakeSecretEnviron:
    """Secret environ values per session in memory; records which sessions were read."""

    def __init__(self, environs: Mapping[SessionId, Mapping[str, str]] | None = None) -> None:
        self.environs = {sid: dict(env) for sid, env in (environs or {}).items()}
        self.reads: list[list[SessionId]] = []

    async def get_secret_environs(
        self, session_ids: Collection[SessionId]
    ) -> dict[SessionId, dict[str, str]]:
        self.reads.append(list(session_ids))
        return {s: dict(self.environs[s]) for s in session_ids if s in self.environs}
