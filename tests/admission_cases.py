"""Hostile payloads of the public tasks and the field each refusal must name."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

IMAGE = "cr.backend.ai/stable/python:3.12-ubuntu22.04"
FIVE_MB = "x" * (5 * 1024 * 1024)
HUNDRED_K_IDS = [str(uuid.UUID(int=i)) for i in range(100_000)]
ONE_ID = str(uuid.UUID(int=1))


@dataclass(frozen=True)
class Hostile:
    """One refused payload: the task, its keyword arguments, and the field to be named."""

    id: str
    task: str
    kwargs: dict[str, Any]
    field: str | None


def create(field: str | None, case: str, **request: Any) -> Hostile:
    return Hostile(case, "sokovan.session.create", {"request": {"image": IMAGE, **request}}, field)


def terminate(field: str | None, case: str, **kwargs: Any) -> Hostile:
    return Hostile(case, "sokovan.session.terminate", kwargs, field)


def terminate_many(field: str | None, case: str, **kwargs: Any) -> Hostile:
    return Hostile(case, "sokovan.sessions.terminate", kwargs, field)


def handler(field: str | None, case: str, **kwargs: Any) -> Hostile:
    return Hostile(case, "sokovan.handler.run", {"handler": "terminate_sessions", **kwargs}, field)


CASES: list[Hostile] = [
    # Types.
    create("resource_slots", "slots-list", resource_slots=[1]),
    create("resource_slots.cpu", "slot-word", resource_slots={"cpu": "lots"}),
    create("resource_slots.cpu", "slot-bool", resource_slots={"cpu": True}),
    create("resource_slots.cpu", "slot-null", resource_slots={"cpu": None}),
    create("resource_slots.cpu", "slot-list", resource_slots={"cpu": [1]}),
    create("kernels", "kernels-bool", kernels=True),
    create("kernels", "kernels-string", kernels="3"),
    create("kernels", "kernels-float", kernels=2.5),
    create("agents", "agents-string", agents="h5a"),
    create("agents[0]", "agents-number", agents=[5]),
    create("environ", "environ-list", environ=[["A", "b"]]),
    create("environ.A", "environ-int-value", environ={"A": 1}),
    create("reason", "create-unknown-nested", reason="x"),
    create("name", "name-int", name=5),
    create("user_uuid", "user-uuid-int", user_uuid=12),
    create("queue", "queue-string", queue="no"),
    create("cluster_mode", "cluster-mode-unknown", cluster_mode="ring"),
    create("network_type", "network-type-unknown", network_type="overlay"),
    Hostile("request-list", "sokovan.session.create", {"request": [1]}, "request"),
    Hostile("request-missing", "sokovan.session.create", {}, "request"),
    Hostile(
        "create-unknown-arg", "sokovan.session.create", {"request": {"image": IMAGE}, "x": 1}, "x"
    ),
    Hostile("image-missing", "sokovan.session.create", {"request": {}}, "image"),
    # Bounds.
    create("resource_slots.cpu", "slot-negative", resource_slots={"cpu": "-4"}),
    create("resource_slots.cpu", "slot-nan", resource_slots={"cpu": "NaN"}),
    create("resource_slots.mem", "slot-infinite", resource_slots={"mem": "Infinity"}),
    create("resource_slots.cpu", "slot-huge", resource_slots={"cpu": 10**30}),
    create("resource_slots.gpu", "slot-unknown-name", resource_slots={"gpu": 1}),
    create("kernels", "kernels-zero", kernels=0),
    create("kernels", "kernels-billion", kernels=10**9),
    create("agents", "agents-count-mismatch", kernels=2, agents=["a1", "a2", "a1"]),
    create("network_id", "persistent-without-network", network_type="persistent"),
    create("image", "image-empty", image=""),
    create("image", "image-with-space", image="a b"),
    create("name", "name-129", name="n" * 129),
    # NUL and unicode.
    create("environ.A", "environ-nul-value", environ={"A": "b\x00c"}),
    create("environ.A\\x00", "environ-nul-name", environ={"A\x00": "b"}),
    create("environ.A=B", "environ-equals-name", environ={"A=B": "c"}),
    create("name", "name-newline", name="line\nbreak"),
    create("name", "name-bidi-control", name="abc\u202edef"),
    create("name", "name-nul", name="a\x00b"),
    create("scaling_group", "scaling-group-unicode", scaling_group="grüppe"),
    # Oversized.
    create("name", "name-5mb", name=FIVE_MB),
    create("image", "image-5mb", image=FIVE_MB),
    create("environ.A", "environ-value-5mb", environ={"A": FIVE_MB}),
    create("resource_slots.cpu", "slot-5mb", resource_slots={"cpu": "1" * (5 * 1024 * 1024)}),
    create("agents", "agents-100k", agents=HUNDRED_K_IDS),
    create("environ", "environ-100k", environ={f"V{i}": "x" for i in range(100_000)}),
    create("environ", "environ-total-size", environ={f"V{i}": "x" * 30_000 for i in range(3)}),
    # Unknown fields.
    create("bogus", "create-unknown-field", bogus=1),
    create(FIVE_MB[:40], "create-5mb-field-name", **{FIVE_MB: 1}),
    # Terminate.
    terminate("session_id", "terminate-not-uuid", session_id="zz"),
    terminate("session_id", "terminate-int-id", session_id=7),
    terminate("session_id", "terminate-missing-id"),
    terminate("session_id", "terminate-5mb-id", session_id=FIVE_MB),
    terminate("reason", "terminate-reason-list", session_id=str(uuid.uuid4()), reason=["x"]),
    terminate("reason", "terminate-reason-5mb", session_id=str(uuid.uuid4()), reason=FIVE_MB),
    terminate("reason", "terminate-reason-nul", session_id=str(uuid.uuid4()), reason="a\x00"),
    terminate("force", "terminate-force-string", session_id=str(uuid.uuid4()), force="yes"),
    terminate("hard", "terminate-unknown-field", session_id=str(uuid.uuid4()), hard=True),
    # Many sessions ended in one message.
    terminate_many("session_ids", "terminate-many-string", session_ids="zz"),
    terminate_many("session_ids", "terminate-many-empty", session_ids=[]),
    terminate_many("session_ids", "terminate-many-missing"),
    terminate_many("session_ids", "terminate-many-100k", session_ids=HUNDRED_K_IDS),
    terminate_many("session_ids[1]", "terminate-many-not-uuid", session_ids=[ONE_ID, "nope"]),
    terminate_many("session_ids[0]", "terminate-many-5mb-id", session_ids=[FIVE_MB]),
    terminate_many("session_ids[0]", "terminate-many-dict-id", session_ids=[{"id": ONE_ID}]),
    terminate_many("reason", "terminate-many-reason-nul", session_ids=[ONE_ID], reason="a\x00"),
    terminate_many("force", "terminate-many-force-int", session_ids=[ONE_ID], force=1),
    terminate_many("hard", "terminate-many-unknown-field", session_ids=[ONE_ID], hard=True),
    # Handler runs.
    handler("handler", "handler-unknown", handler="rm_rf"),
    handler("handler", "handler-list", handler=["terminate_sessions"]),
    handler("budget", "budget-zero", budget=0),
    handler("budget", "budget-bool", budget=True),
    handler("budget", "budget-string", budget="5"),
    handler("trigger", "trigger-unknown", trigger="cron"),
    handler("scope", "scope-100k", scope=HUNDRED_K_IDS),
    handler("scope[0]", "scope-not-uuid", scope=["nope"]),
    handler("scope", "scope-string", scope="abc"),
    handler("when", "handler-unknown-field", when="now"),
    # Tasks that take no arguments.
    Hostile("sync-with-args", "sokovan.agents.sync", {"everything": True}, "everything"),
    Hostile("recover-with-args", "sokovan.maintenance.recover", {"run": 1}, "run"),
    Hostile("prune-with-args", "sokovan.maintenance.prune", {"days": 0}, "days"),
]
