"""Image pulls of a launch: one batch per agent, what one pull task does, shared helpers.

The pull calls one agent and turns its answer or failure into one outcome per waiting
kernel; it never raises, so one agent's failure never blocks the others.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

from sokovan.errors import describe_error
from sokovan.images import image_config_from_json, image_config_to_json
from sokovan.ports import AgentClientPool
from sokovan.text import bounded_text
from sokovan.types import (
    JSON,
    AgentBatch,
    AgentId,
    ImageConfig,
    ItemOutcome,
    KernelInfo,
    SessionInfo,
)

log = logging.getLogger(__name__)

# check_and_pull compares digests too, so an agent with a stale tag still pulls.
PULL_AUTO_PULL: Final = "digest"


def pull_batch(
    agent_id: AgentId, images: Mapping[str, ImageConfig], kernels: list[JSON]
) -> AgentBatch:
    """One agent's pull job: its images once each, and the kernels waiting on them."""
    item = {
        "images": {name: image_config_to_json(cfg, PULL_AUTO_PULL) for name, cfg in images.items()},
        "kernels": kernels,
    }
    return AgentBatch(agent_id=agent_id, items=(item,))


def plan_image_pulls(
    sessions: Sequence[SessionInfo], image_configs: Mapping[str, ImageConfig]
) -> tuple[list[AgentBatch], list[ItemOutcome]]:
    """One pull batch per agent, and outcomes for kernels that cannot be pulled for."""
    images: dict[AgentId, dict[str, ImageConfig]] = {}
    waiting: dict[AgentId, list[JSON]] = {}
    refused: list[ItemOutcome] = []
    for session in sessions:
        for kernel in session.kernels:
            if kernel.agent_id is None:
                log.warning(
                    "kernel %s of session %s has no agent: no image pull", kernel.id, session.id
                )
                refused.append(refused_outcome(kernel, "no agent assigned", skipped=True))
                continue
            config = image_configs.get(kernel.image)
            if config is None:
                log.warning(
                    "kernel %s of session %s: image %r has no image config",
                    kernel.id,
                    session.id,
                    kernel.image,
                )
                refused.append(
                    refused_outcome(kernel, f"UnknownImage: {kernel.image}", skipped=False)
                )
                continue
            images.setdefault(kernel.agent_id, {}).setdefault(kernel.image, config)
            waiting.setdefault(kernel.agent_id, []).append(
                {"kernel_id": str(kernel.id), "session_id": str(session.id), "image": kernel.image}
            )
    batches = [pull_batch(agent, images[agent], waiting[agent]) for agent in images]
    return batches, refused


def refused_outcome(kernel: KernelInfo, error: str, *, skipped: bool) -> ItemOutcome:
    return ItemOutcome(
        item_id=str(kernel.id),
        agent_id=kernel.agent_id,
        ok=False,
        error=error,
        detail={"session_id": str(kernel.session_id), "image": kernel.image},
        skipped=skipped,
    )


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
        error = describe_error(exc, with_type=True)
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


def jsonable(value: Any) -> Any:
    """A JSON-safe copy of an agent's answer: ids and decimals as strings, unknowns as repr.

    Text is bounded: the answer comes from the agent and is stored.
    """
    if isinstance(value, str):
        return bounded_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {bounded_text(str(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, uuid.UUID | Decimal):
        return bounded_text(str(value))
    if isinstance(value, bytes):
        return bounded_text(value.hex())
    return bounded_text(repr(value))
