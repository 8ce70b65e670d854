"""The per-agent work of a launch fan-out: what one task does on a worker.

Each function calls one agent and turns every answer or failure into one outcome
per kernel; it never raises, so one agent's failure never blocks the others.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from sokovan.constants import PULL_AUTO_PULL
from sokovan.images import image_config_from_json, image_config_to_json
from sokovan.ports import AgentClientPool, SecretStore, SessionRecorder
from sokovan.scheduler.launcher.status_data import error_info_of
from sokovan.types import JSON, AgentBatch, AgentId, ImageConfig, ItemOutcome, KernelId, SessionId

log = logging.getLogger(__name__)


def pull_batch(
    agent_id: AgentId, images: Mapping[str, ImageConfig], kernels: list[JSON]
) -> AgentBatch:
    """One agent's pull job: its images once each, and the kernels waiting on them."""
    item = {
        "images": {name: image_config_to_json(cfg, PULL_AUTO_PULL) for name, cfg in images.items()},
        "kernels": kernels,
    }
    return AgentBatch(agent_id=agent_id, items=(item,))


async def pull_images_on_agent(
    pool: AgentClientPool, agent_id: AgentId, items: Sequence[Mapping[str, Any]]
) -> list[ItemOutcome]:
    """Runs check_and_pull once for the agent's images; one outcome per waiting kernel."""
    images: dict[str, ImageConfig] = {}
    kernels: list[Mapping[str, Any]] = []
    for item in items:
        for name, data in (item.get("images") or {}).items():
            images.setdefault(name, image_config_from_json(data))
        kernels.extend(item.get("kernels") or [])
    started = time.monotonic()
    try:
        async with pool.acquire(agent_id) as client:
            answers = dict(await client.check_and_pull(images))
    except Exception as exc:
        error = describe(exc)
        log.warning(
            "check_and_pull on agent %s failed for images %s: %s", agent_id, sorted(images), error
        )
        return [_pull_outcome(agent_id, k, False, error, {}, started) for k in kernels]
    answers = {str(k): str(v) for k, v in answers.items()}
    return [_pull_outcome(agent_id, k, True, None, answers, started) for k in kernels]


def _pull_outcome(
    agent_id: AgentId,
    kernel: Mapping[str, Any],
    ok: bool,
    error: str | None,
    answers: Mapping[str, str],
    started: float,
) -> ItemOutcome:
    image = str(kernel.get("image", ""))
    return ItemOutcome(
        item_id=str(kernel["kernel_id"]),
        agent_id=str(agent_id),
        ok=ok,
        error=error,
        duration=time.monotonic() - started,
        detail={
            "session_id": str(kernel.get("session_id", "")),
            "image": image,
            "answer": answers.get(image),
            "images": dict(answers),
        },
    )


async def create_kernels_on_agent(
    pool: AgentClientPool,
    secrets: SecretStore,
    agent_id: AgentId,
    items: Sequence[Mapping[str, Any]],
    recorder: SessionRecorder | None = None,
) -> list[ItemOutcome]:
    """Runs create_kernels once per session among the items; one outcome per kernel.

    With a recorder, a session whose creation failed gets its error info stored.
    """
    by_session: dict[str, list[Mapping[str, Any]]] = {}
    for item in items:
        by_session.setdefault(str(item["session_id"]), []).append(item)
    outcomes: list[ItemOutcome] = []
    for session_id, session_items in by_session.items():
        outcomes.extend(
            await _create_session_kernels(
                pool, secrets, recorder, agent_id, session_id, session_items
            )
        )
    return outcomes


async def _create_session_kernels(
    pool: AgentClientPool,
    secrets: SecretStore,
    recorder: SessionRecorder | None,
    agent_id: AgentId,
    session_id: str,
    items: list[Mapping[str, Any]],
) -> list[ItemOutcome]:
    started = time.monotonic()
    sid = SessionId(uuid.UUID(session_id))
    kernel_ids = [KernelId(uuid.UUID(str(i["kernel_id"]))) for i in items]
    configs = [dict(i["config"]) for i in items]
    image_refs = {
        k: image_config_from_json(c["image"]) for k, c in zip(kernel_ids, configs, strict=True)
    }
    try:
        private_key, public_key = await secrets.get_ssh_keypair(sid)
        cluster_info = {
            **items[0]["cluster_info"],
            "ssh_keypair": {"private_key": private_key, "public_key": public_key},
        }
        async with pool.acquire(agent_id) as client:
            created = await client.create_kernels(
                sid, kernel_ids, configs, cluster_info, image_refs
            )
    except Exception as exc:
        error, error_info = describe(exc), error_info_of(exc)
        log.warning(
            "create_kernels of session %s on agent %s failed for kernels %s: %s",
            session_id,
            agent_id,
            [str(k) for k in kernel_ids],
            error,
        )
        await _record_error(recorder, sid, error_info)
        return [
            _create_outcome(
                agent_id, session_id, k, False, error, {"error_info": error_info}, started
            )
            for k in kernel_ids
        ]
    infos = _match_creation_infos(kernel_ids, created)
    return [
        _create_outcome(
            agent_id, session_id, k, True, None, {"creation_info": infos.get(k, {})}, started
        )
        for k in kernel_ids
    ]


async def _record_error(
    recorder: SessionRecorder | None, session_id: SessionId, error_info: JSON
) -> None:
    if recorder is None:
        return
    try:
        await recorder.update_session_error_info(session_id, error_info)
    except Exception:
        log.warning("error info of session %s could not be stored", session_id, exc_info=True)


def _match_creation_infos(
    kernel_ids: list[KernelId], created: Sequence[Mapping[str, Any]] | None
) -> dict[KernelId, JSON]:
    """Pairs the agent's creation infos with kernels, by their `id` or else by position."""
    infos = [jsonable(dict(c)) for c in (created or [])]
    by_id = {str(i.get("id")): i for i in infos if i.get("id") is not None}
    if by_id:
        return {k: by_id[str(k)] for k in kernel_ids if str(k) in by_id}
    return dict(zip(kernel_ids, infos, strict=False))


def _create_outcome(
    agent_id: AgentId,
    session_id: str,
    kernel_id: KernelId,
    ok: bool,
    error: str | None,
    extra: JSON,
    started: float,
) -> ItemOutcome:
    return ItemOutcome(
        item_id=str(kernel_id),
        agent_id=str(agent_id),
        ok=ok,
        error=error,
        duration=time.monotonic() - started,
        detail={"session_id": session_id, **extra},
    )


def describe(exc: BaseException) -> str:
    """`Name: message` of an exception, for an outcome's error."""
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def jsonable(value: Any) -> Any:
    """A JSON-safe copy of an agent's answer: ids and decimals as strings, unknowns as repr."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, uuid.UUID | Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return repr(value)
