"""Public task arguments -> validated domain values, or the Refusal that says what is wrong."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from sokovan.admission.refusal import INVALID, Refusal, echo, field_path, from_validation
from sokovan.admission.schemas import (
    CreateSessionRequest,
    ImageName,
    Limits,
    NoArguments,
    Payload,
    RunHandlerPayload,
    TerminateSessionPayload,
    TouchSessionPayload,
)
from sokovan.records import SessionRequest
from sokovan.types import AgentId, ClusterMode, NetworkType, ResourceSlot, SessionId

P = TypeVar("P", bound=Payload)
log = logging.getLogger(__name__)


def keywords(
    names: Sequence[str], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> dict[str, Any] | Refusal:
    """Positional and keyword task arguments as one mapping by parameter name."""
    if len(args) > len(names):
        return Refusal(f"at most {len(names)} positional argument(s), got {len(args)}")
    out = dict(zip(names, args, strict=False))
    for key, value in kwargs.items():
        if key in out:
            name = field_path([key])
            return Refusal(f"{name}: given twice", INVALID, name)
        out[key] = value
    return out


def validate(model: type[P], data: Any, limits: Limits | None = None) -> P | Refusal:
    """The payload as `model`, or the refusal of its first error."""
    if not isinstance(data, dict):
        return Refusal(f"a JSON object is required (got {echo(data)})")
    try:
        return model.model_validate(data, context=limits or Limits())
    except ValidationError as e:
        return from_validation(e)


def parse_create(request: Any, limits: Limits) -> SessionRequest | Refusal:
    """A `sokovan.session.create` request as a SessionRequest, or its refusal."""
    if not isinstance(request, dict):
        return Refusal(f"request: a JSON object is required (got {echo(request)})", field="request")
    parsed = validate(CreateSessionRequest, request, limits)
    if isinstance(parsed, Refusal):
        return parsed
    return SessionRequest(
        image=parsed.image,
        kernels=parsed.kernels,
        cluster_mode=ClusterMode(parsed.cluster_mode),
        network_type=NetworkType(parsed.network_type),
        network_id=parsed.network_id,
        resource_slots=ResourceSlot(parsed.resource_slots),
        environ=dict(parsed.environ),
        agents=tuple(AgentId(a) for a in parsed.agents),
        name=parsed.name,
        scaling_group=parsed.scaling_group,
        user_uuid=parsed.user_uuid,
        access_key=parsed.access_key,
        queue=parsed.queue,
        session_id=SessionId(parsed.session_id) if parsed.session_id else None,
    )


def parse_create_call(
    args: Sequence[Any], kwargs: Mapping[str, Any], limits: Limits
) -> SessionRequest | Refusal:
    """The task's own arguments (`request=...` only), then the request itself."""
    given = keywords(["request"], args, kwargs)
    if isinstance(given, Refusal):
        return given
    unknown = sorted(k for k in given if k != "request")
    if unknown:
        name = field_path([unknown[0]])
        return Refusal(f"{name}: unknown field", INVALID, name)
    if "request" not in given:
        return Refusal("request: required", INVALID, "request")
    return parse_create(given["request"], limits)


def parse_call(
    model: type[P], args: Sequence[Any], kwargs: Mapping[str, Any], limits: Limits | None = None
) -> P | Refusal:
    """A task's arguments (positional in the schema's field order) validated by `model`."""
    given = keywords(list(model.model_fields), args, kwargs)
    if isinstance(given, Refusal):
        return given
    return validate(model, given, limits)


def parse_terminate(
    args: Sequence[Any], kwargs: Mapping[str, Any]
) -> TerminateSessionPayload | Refusal:
    return parse_call(TerminateSessionPayload, args, kwargs)


def parse_touch(args: Sequence[Any], kwargs: Mapping[str, Any]) -> TouchSessionPayload | Refusal:
    return parse_call(TouchSessionPayload, args, kwargs)


def parse_run_handler(
    args: Sequence[Any], kwargs: Mapping[str, Any], limits: Limits
) -> RunHandlerPayload | Refusal:
    return parse_call(RunHandlerPayload, args, kwargs, limits)


def parse_image_name(name: Any) -> str | Refusal:
    """An image's canonical name as `sokovan image add` and session requests accept it."""
    try:
        return str(TypeAdapter(ImageName).validate_python(name))
    except ValidationError as e:
        refusal = from_validation(e)
        return Refusal(f"image: {refusal.error}", refusal.kind, "image")


def refuse_arguments(args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The refusal (as JSON) of arguments given to a task that takes none, else None."""
    parsed = parse_call(NoArguments, args, kwargs)
    if not isinstance(parsed, Refusal):
        return None
    log.warning("arguments refused: %s", parsed.error)
    return parsed.to_json()
