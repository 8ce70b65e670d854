"""One schema per public task payload; anything they do not accept is refused before use."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from sokovan import constants as C

# Longest drain deadline accepted: a day; a longer maintenance is a cordon.
MAX_DRAIN_DEADLINE_SEC: Final = 86_400.0
# Registered capacities above these are no machine's (typos or unit mistakes): cores, bytes.
MAX_AGENT_CPU: Final = 100_000
MAX_AGENT_MEM: Final = 2**60
# The sessions.name column is this wide.
MAX_SESSION_NAME_CHARS: Final = 128
# images.canonical and sessions.network_id columns are this wide.
MAX_IMAGE_NAME_CHARS: Final = 255
# scaling_group, agent id and access_key columns are this wide.
MAX_SHORT_ID_CHARS: Final = 64
# status_info (where the termination reason is kept) is this wide.
MAX_REASON_CHARS: Final = 64
# Environment variables per session: far above what a job uses, far below what hurts an agent.
MAX_ENVIRON_VARS: Final = 256
# One environment variable name, and one value (a certificate or a short script fits).
MAX_ENVIRON_NAME_CHARS: Final = 256
MAX_ENVIRON_VALUE_CHARS: Final = 32_768
# All names and values of a session together: the environ column and the agent's config.
MAX_ENVIRON_TOTAL_CHARS: Final = 65_536
# Resource slots per kernel request; Backend.AI agents report a handful.
MAX_SLOT_ENTRIES: Final = 32
# A slot amount as text: enough for memory in bytes with decimals, too short to be a payload.
MAX_SLOT_VALUE_CHARS: Final = 32
# Ids in one handler run's scope: above the follow-up of any one run the scheduler kicks
# itself (a run's sessions), far below what fills a worker's memory.
MAX_SCOPE_IDS: Final = 50_000
# Items per run a caller may ask for at most.
MAX_BUDGET: Final = 10_000_000
# Public read tasks: `sokovan.session.list` pages and `sokovan.run.get` items are bounded.
READ_LIST_MAX: Final = 1000
READ_LIST_DEFAULT: Final = 50
READ_ITEMS_MAX: Final = 10_000
READ_ITEMS_DEFAULT: Final = 1000

# Backend.AI's slot names: the intrinsic ones and the accelerator plugins' device slots.
KNOWN_SLOTS: Final = frozenset(
    {
        "cpu",
        "mem",
        "cuda.device",
        "cuda.shares",
        "rocm.device",
        "tpu.device",
        "ipu.device",
        "atom.device",
        "atom-plus.device",
        "gaudi2.device",
        "warboy.device",
        "rngd.device",
        "hyperaccel-lpu.device",
    }
)
# A slot amount above this is no machine's capacity (memory in bytes included).
MAX_SLOT_AMOUNT: Final = Decimal(10) ** 18
DEFAULT_SLOTS: Final = {"cpu": "1", "mem": "1073741824"}


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that come from settings and state, passed to validation as its context."""

    max_kernels: int = C.MAX_KERNELS_PER_SESSION
    handlers: frozenset[str] = frozenset()


def limits_of(info: ValidationInfo) -> Limits:
    context = info.context
    return context if isinstance(context, Limits) else Limits()


def _printable(value: str) -> str:
    if not value.isprintable():
        raise PydanticCustomError("printable", "only printable characters are allowed")
    return value


def _one_word(value: str) -> str:
    if any(c.isspace() for c in value):
        raise PydanticCustomError("one_word", "no spaces are allowed")
    return value


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise PydanticCustomError("nul", "NUL characters are not allowed")
    return value


def _env_name(value: str) -> str:
    if "=" in value or "\x00" in value:
        raise PydanticCustomError("env_name", "a variable name has no '=' and no NUL")
    return value


def _slot_name(value: str) -> str:
    if value not in KNOWN_SLOTS:
        raise PydanticCustomError(
            "slot_name",
            "unknown slot name; known: {known}",
            {"known": ", ".join(sorted(KNOWN_SLOTS))},
        )
    return value


def _slot_amount(value: Any) -> Decimal:
    """A finite, non-negative amount from a number or numeric string (never a bool)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise PydanticCustomError("slot_type", "a number or a numeric string is required")
    if isinstance(value, str) and len(value) > MAX_SLOT_VALUE_CHARS:
        raise PydanticCustomError("slot_too_long", "a slot amount is a short number")
    if isinstance(value, int) and value.bit_length() > 64:
        raise PydanticCustomError("slot_too_large", "the amount is out of range")
    try:
        amount = Decimal(value if isinstance(value, str | int | Decimal) else str(value))
    except InvalidOperation:
        raise PydanticCustomError("slot_number", "not a number") from None
    if not amount.is_finite():
        raise PydanticCustomError("slot_finite", "the amount must be finite")
    if amount < 0:
        raise PydanticCustomError("slot_negative", "the amount must be 0 or more")
    if amount > MAX_SLOT_AMOUNT:
        raise PydanticCustomError("slot_too_large", "the amount is out of range")
    return amount


def _uuid_text(value: Any) -> Any:
    # Ids travel as JSON strings; anything else (a number, a list) is not an id.
    if not isinstance(value, str | uuid.UUID):
        raise PydanticCustomError("uuid_type", "a UUID string is required")
    if isinstance(value, str) and len(value) > 64:
        raise PydanticCustomError("uuid_parsing", "not a UUID")
    return value


Printable = AfterValidator(_printable)
ImageName = Annotated[
    StrictStr,
    StringConstraints(min_length=1, max_length=MAX_IMAGE_NAME_CHARS),
    Printable,
    AfterValidator(_one_word),
]
SessionName = Annotated[StrictStr, StringConstraints(max_length=MAX_SESSION_NAME_CHARS), Printable]
AccessKey = Annotated[StrictStr, StringConstraints(max_length=MAX_SHORT_ID_CHARS), Printable]
Reason = Annotated[
    StrictStr, StringConstraints(min_length=1, max_length=MAX_REASON_CHARS), Printable
]
HandlerName = Annotated[
    StrictStr, StringConstraints(min_length=1, max_length=MAX_SHORT_ID_CHARS), Printable
]
Uuid = Annotated[uuid.UUID, BeforeValidator(_uuid_text)]
SlotName = Annotated[StrictStr, StringConstraints(max_length=64), AfterValidator(_slot_name)]
SlotAmount = Annotated[Decimal, BeforeValidator(_slot_amount), Field(ge=0, allow_inf_nan=False)]
EnvName = Annotated[
    StrictStr,
    StringConstraints(min_length=1, max_length=MAX_ENVIRON_NAME_CHARS),
    AfterValidator(_env_name),
]
EnvValue = Annotated[
    StrictStr, StringConstraints(max_length=MAX_ENVIRON_VALUE_CHARS), AfterValidator(_no_nul)
]
ShortId = Annotated[
    StrictStr,
    StringConstraints(min_length=1, max_length=MAX_SHORT_ID_CHARS, pattern=r"^[A-Za-z0-9._:@-]+$"),
]


class Payload(BaseModel):
    """Base of the public payloads: unknown fields are refused, values never coerced."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CreateSessionRequest(Payload):
    """`sokovan.session.create(request=...)`: the session to submit."""

    image: ImageName = Field(
        description="An image added with `sokovan image add`; printable, no spaces."
    )
    kernels: StrictInt = Field(
        1, ge=1, description="At most `SOKOVAN_MAX_KERNELS_PER_SESSION` (64)."
    )
    cluster_mode: Literal["single-node", "multi-node"] = "single-node"
    network_type: Literal["volatile", "persistent", "host"] = "volatile"
    network_id: ImageName | None = Field(
        None, description="An existing network; required when network_type is persistent."
    )
    resource_slots: dict[SlotName, SlotAmount] = Field(
        default_factory=lambda: {k: Decimal(v) for k, v in DEFAULT_SLOTS.items()},
        max_length=MAX_SLOT_ENTRIES,
        description="Per kernel. Names: " + ", ".join(sorted(KNOWN_SLOTS)) + ". Amounts: a "
        f"number or numeric string (at most {MAX_SLOT_VALUE_CHARS} chars), finite, "
        f">= 0, <= 10^18; never a bool.",
    )
    environ: dict[EnvName, EnvValue] = Field(
        default_factory=dict,
        max_length=MAX_ENVIRON_VARS,
        description="Strings only, no NUL, no `=` in a name; "
        f"{MAX_ENVIRON_TOTAL_CHARS} chars in all.",
    )
    agents: list[ShortId] = Field(
        default_factory=list,
        description="Agent ids to place on: none (the freest agents), one, or one per kernel.",
    )
    name: SessionName = Field("", description="Printable; empty: `session-<id prefix>`.")
    scaling_group: ShortId = "default"
    user_uuid: Uuid = Field(default_factory=lambda: uuid.UUID(int=0))
    access_key: AccessKey = Field("", description="Printable.")
    queue: StrictBool = Field(
        True,
        description="Wait as PENDING when no agent has room now; false refuses with NoCapacity.",
    )
    session_id: Uuid | None = Field(
        None,
        description="The id to store it under, chosen by the sender so it knows the id before "
        "the answer; a request naming a stored session is answered with that session, never "
        "stored twice. Null: the scheduler picks one.",
    )

    @field_validator("kernels")
    @classmethod
    def _kernels_bound(cls, value: int, info: ValidationInfo) -> int:
        limit = limits_of(info).max_kernels
        if value > limit:
            raise PydanticCustomError("too_many", "at most {limit} kernels", {"limit": limit})
        return value

    @field_validator("agents", mode="before")
    @classmethod
    def _agents_bound(cls, value: Any, info: ValidationInfo) -> Any:
        # Checked before the items: a 100k-element list is refused without reading it.
        limit = limits_of(info).max_kernels
        if isinstance(value, list) and len(value) > limit:
            raise PydanticCustomError("too_many", "at most {limit} agents", {"limit": limit})
        return value

    @field_validator("environ")
    @classmethod
    def _environ_size(cls, value: dict[str, str]) -> dict[str, str]:
        total = sum(len(k) + len(v) for k, v in value.items())
        if total > MAX_ENVIRON_TOTAL_CHARS:
            raise PydanticCustomError(
                "too_large",
                "{total} chars in all, at most {limit}",
                {"total": total, "limit": MAX_ENVIRON_TOTAL_CHARS},
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CreateSessionRequest:
        if len(self.agents) not in (0, 1, self.kernels):
            raise PydanticCustomError(
                "agents_count",
                "name 1 agent or one per kernel ({kernels}), not {count}",
                {"field": "agents", "kernels": self.kernels, "count": len(self.agents)},
            )
        if self.network_type == "persistent" and not self.network_id:
            raise PydanticCustomError(
                "network_id",
                "a persistent network needs the id of an existing network",
                {"field": "network_id"},
            )
        return self


class TerminateSessionPayload(Payload):
    """`sokovan.session.terminate(session_id, reason, force)`."""

    session_id: Uuid = Field(description="An unknown id is a NotFound refusal.")
    reason: Reason = Field(
        "USER_REQUESTED",
        description="Printable; recorded on the session, mapped to the agent's lifecycle reason.",
    )
    force: StrictBool = Field(
        False,
        description="Give kernels up at once (FORCE_TERMINATED) if their agent cannot "
        "destroy them, instead of retrying until the TERMINATING deadline.",
    )


class TouchSessionPayload(Payload):
    """`sokovan.session.touch(session_id)`: the manager saw the session in use just now."""

    session_id: Uuid = Field(description="An unknown id is a NotFound refusal.")


class RunHandlerPayload(Payload):
    """`sokovan.handler.run(handler, trigger, scope, budget)`."""

    handler: HandlerName = Field(description="A declared handler (`sokovan handlers list`).")
    trigger: Literal["beat", "manual", "event", "api"] = "manual"
    scope: list[Uuid] | None = Field(
        None, max_length=MAX_SCOPE_IDS, description="Only these session or kernel ids."
    )
    budget: StrictInt | None = Field(
        None, ge=1, le=MAX_BUDGET, description="At most this many items this run."
    )

    @field_validator("handler")
    @classmethod
    def _known_handler(cls, value: str, info: ValidationInfo) -> str:
        known = limits_of(info).handlers
        if known and value not in known:
            raise PydanticCustomError(
                "unknown_handler",
                "unknown handler; known: {known}",
                {"known": ", ".join(sorted(known))},
            )
        return value


class CreateSessionsPayload(Payload):
    """`sokovan.sessions.create(requests=[...])`: many sessions in one message."""

    requests: list[Any] = Field(
        min_length=1,
        max_length=C.SESSION_BATCH_MAX,
        description="Requests as for `sokovan.session.create`; each is refused on its own.",
    )


class TerminateSessionsPayload(Payload):
    """`sokovan.sessions.terminate(session_ids=[...], reason, force)`: many in one message."""

    session_ids: list[Uuid] = Field(
        min_length=1,
        max_length=C.SESSION_BATCH_MAX,
        description="Each is answered on its own; an unknown id is a NotFound refusal of that "
        "id alone.",
    )
    reason: Reason = Field(
        "USER_REQUESTED",
        description="Printable; recorded on every session, mapped to the agent's lifecycle reason.",
    )
    force: StrictBool = Field(
        False, description="As for `sokovan.session.terminate`, for every session."
    )


SessionStatusName = Literal[
    "PENDING",
    "SCHEDULED",
    "PREPARING",
    "PULLING",
    "PREPARED",
    "CREATING",
    "RUNNING",
    "TERMINATING",
    "TERMINATED",
    "CANCELLED",
    "ERROR",
]


class GetSessionPayload(Payload):
    """`sokovan.session.get(session_id)`: a session with its kernels."""

    session_id: Uuid = Field(description="An unknown id is a NotFound refusal.")


class ListSessionsPayload(Payload):
    """`sokovan.session.list(statuses, agent, limit)`: sessions newest first."""

    statuses: list[SessionStatusName] = Field(
        default_factory=list, max_length=16, description="Only these statuses; none: all."
    )
    agent: ShortId | None = Field(None, description="Only sessions with a kernel on this agent.")
    limit: StrictInt = Field(
        READ_LIST_DEFAULT,
        ge=1,
        le=READ_LIST_MAX,
        description="At most this many, newest first; `total` and `more` count the rest.",
    )


class GetRunPayload(Payload):
    """`sokovan.run.get(run_id, items_limit)`: a run with its counts and items."""

    run_id: StrictInt = Field(
        ge=1, le=2**63 - 1, description="An unknown id is a NotFound refusal."
    )
    items_limit: StrictInt = Field(
        READ_ITEMS_DEFAULT,
        ge=1,
        le=READ_ITEMS_MAX,
        description="At most this many items, in recording order; `items_more` counts the rest.",
    )


def _tcp_address(value: str) -> str:
    """`tcp://HOST:PORT` with a host and a port in 1..65535, as an agent's RPC listens."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme != "tcp":
        raise PydanticCustomError("rpc_scheme", "expected tcp://HOST:PORT (the scheme must be tcp)")
    host, colon, port = rest.rpartition(":")
    if not colon or not host.strip("[]"):
        raise PydanticCustomError("rpc_host", "expected tcp://HOST:PORT (the host is empty)")
    if not re.fullmatch(r"[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]", host):
        raise PydanticCustomError("rpc_host", "the host is a name or an IP address")
    if not (port.isascii() and port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
        raise PydanticCustomError("rpc_port", "the port must be 1..65535")
    return value


def _capacity_bounds(value: dict[str, Decimal]) -> dict[str, Decimal]:
    """cpu and mem are given, above 0, and no larger than a machine's."""
    for name, most in (("cpu", MAX_AGENT_CPU), ("mem", MAX_AGENT_MEM)):
        amount = value.get(name)
        if amount is None or amount <= 0:
            raise PydanticCustomError(
                "capacity", "an agent needs more than 0 of it", {"field": f"capacity.{name}"}
            )
        if amount > most:
            raise PydanticCustomError(
                "capacity",
                "at most {most} (got {amount})",
                {"field": f"capacity.{name}", "most": most, "amount": str(amount)},
            )
    return value


RpcAddress = Annotated[
    StrictStr, StringConstraints(min_length=1, max_length=255), AfterValidator(_tcp_address)
]
AgentIdText = Annotated[ShortId, Field(description="An agent id (`sokovan agents list`).")]


class AgentPayload(Payload):
    """`sokovan.agents.cordon(agent_id)`, `sokovan.agents.uncordon(agent_id)`."""

    agent_id: AgentIdText


class DrainAgentPayload(Payload):
    """`sokovan.agents.drain(agent_id, deadline_seconds, wait_for_sessions)`."""

    agent_id: AgentIdText
    deadline_seconds: StrictFloat = Field(
        C.DRAIN_DEADLINE_SEC,
        ge=0,
        le=MAX_DRAIN_DEADLINE_SEC,
        allow_inf_nan=False,
        description="By then the agent holds no kernel: what is left is given up "
        "(FORCE_TERMINATED) if its agent cannot destroy it.",
    )
    wait_for_sessions: StrictBool = Field(
        False,
        description="Let sessions end on their own until the deadline instead of "
        "terminating them at once.",
    )


class RegisterAgentPayload(Payload):
    """`sokovan.agents.register(agent_id, rpc_addr, scaling_group, capacity)`."""

    agent_id: AgentIdText
    rpc_addr: RpcAddress = Field(description="`tcp://HOST:PORT`, port 1..65535.")
    scaling_group: ShortId = "default"
    capacity: Annotated[dict[SlotName, SlotAmount], AfterValidator(_capacity_bounds)] = Field(
        default_factory=lambda: {"cpu": Decimal(4), "mem": Decimal(8 * 2**30)},
        max_length=MAX_SLOT_ENTRIES,
        description=f"Slots as in resource_slots; cpu 0 < n <= {MAX_AGENT_CPU}, "
        f"mem 0 < bytes <= 2^60.",
    )


class NoArguments(Payload):
    """`sokovan.agents.sync`, `sokovan.maintenance.recover`, `sokovan.maintenance.prune`."""


# Task name -> the schema of its keyword arguments (create's `request` is one object).
PUBLIC_PAYLOADS: Final[dict[str, type[Payload]]] = {
    "sokovan.session.create": CreateSessionRequest,
    "sokovan.sessions.create": CreateSessionsPayload,
    "sokovan.session.terminate": TerminateSessionPayload,
    "sokovan.sessions.terminate": TerminateSessionsPayload,
    "sokovan.session.touch": TouchSessionPayload,
    "sokovan.handler.run": RunHandlerPayload,
    "sokovan.session.get": GetSessionPayload,
    "sokovan.session.list": ListSessionsPayload,
    "sokovan.run.get": GetRunPayload,
    "sokovan.agents.sync": NoArguments,
    "sokovan.agents.register": RegisterAgentPayload,
    "sokovan.agents.cordon": AgentPayload,
    "sokovan.agents.uncordon": AgentPayload,
    "sokovan.agents.drain": DrainAgentPayload,
    "sokovan.maintenance.recover": NoArguments,
    "sokovan.maintenance.prune": NoArguments,
}
