"""Errors of the scheduler. A per-item failure in a fan-out is a value, not one of these.

SokovanError                 the operation cannot go on
├── ConfigError              a setting is missing or malformed
├── InvalidRequest           a caller's input was refused before anything was created
│   ├── UnknownAgent
│   ├── AgentCordoned        a named agent takes no new kernel (cordoned or draining)
│   ├── NoCapacity
│   ├── UnknownImage         (also a ValueError)
│   └── EmptySession         a session to start has no kernels (also a ValueError)
├── NotFound                 a session, kernel, run or handler id that does not exist
│   └── UnknownHandler       a handler name that no declaration has
├── AgentError               an agent call failed
│   ├── AgentUnavailable     no connection (refused, timed out, marked unavailable)
│   ├── AgentTimeout         the call was sent but no reply came in time
│   ├── AgentRemoteError     the agent raised; carries its error name and message
│   └── WireError            a reply could not be decoded safely (hostile or malformed)
│       ├── PickleRejected   a pickled value we do not rebuild
│       └── ReplyShapeError  a reply decoded, but is not the shape its method returns
├── PresenceUnavailable      the presence store could not be read
├── NetworkPluginError       a network driver is missing or failed
│   └── UnknownNetworkDriver no plugin for the driver (also a KeyError)
├── DispatchError            the fan-out could not be handed to the broker
└── AgentdError              the reference agent refused a call (sent as an RPC user error)
    ├── InjectedFault        a fault set on purpose by a test or an operator
    ├── AgentIdNotFoundError a call addressed to an agent id this daemon does not serve
    └── UnknownRPCMethod     a call to a method the agent does not serve
"""

from __future__ import annotations

from typing import Final

from sokovan import constants as C
from sokovan.text import bounded_text

# An exception's class name is short; a longer "name" from an agent is noise or an attack.
AGENT_ERROR_NAME_MAX_BYTES: Final = 200


class SokovanError(Exception):
    """Root of every error the scheduler raises."""


class ConfigError(SokovanError):
    """A setting is missing or malformed."""


class InvalidRequest(SokovanError):
    """A caller's input was refused before anything was created."""

    def __init__(self, message: str = "", field: str | None = None) -> None:
        super().__init__(message)
        # The request field the refusal is about ("agents", "resource_slots.cpu"), if one.
        self.field = field


class UnknownAgent(InvalidRequest):
    """An agent id that is not registered."""


class AgentCordoned(InvalidRequest):
    """A request names an agent that takes no new kernel (cordoned or draining)."""


class NoCapacity(InvalidRequest):
    """No registered agent has room for the requested slots."""


class UnknownImage(InvalidRequest, ValueError):
    """A kernel's image has no image config."""


class EmptySession(InvalidRequest, ValueError):
    """A session to start has no kernels."""


class NotFound(SokovanError):
    """An id that does not exist."""


class UnknownHandler(NotFound):
    """A handler name that no declaration has."""


class AgentError(SokovanError):
    """An agent call failed."""


class AgentUnavailable(AgentError):
    """The agent could not be reached."""


class AgentTimeout(AgentError):
    """The agent did not answer in time."""


class AgentRemoteError(AgentError):
    """The agent raised an exception while serving the call."""

    def __init__(self, name: str, message: str, method: str = "") -> None:
        # Both come from the agent: bounded here so no caller stores or logs them whole.
        name, message = bounded_text(name, AGENT_ERROR_NAME_MAX_BYTES), bounded_text(message)
        super().__init__(f"{name}: {message}" if name else message)
        self.name = name
        self.message = message
        self.method = method


class WireError(AgentError):
    """A message could not be decoded safely."""


class PickleRejected(WireError):
    """A pickled value holds something we do not rebuild (never unpickled)."""


class ReplyShapeError(WireError):
    """A reply decoded, but is not the shape its method returns."""

    def __init__(self, message: str, method: str, expected: str) -> None:
        super().__init__(message)
        self.method = method
        self.expected = expected


class PresenceUnavailable(SokovanError):
    """The presence store could not be read."""


class NetworkPluginError(SokovanError):
    """A network driver is missing or failed."""


class UnknownNetworkDriver(NetworkPluginError, KeyError):
    """The configured network driver has no plugin; the message lists the available ones."""

    def __str__(self) -> str:
        # KeyError quotes its argument; this error is read by people.
        return str(self.args[0]) if self.args else ""


class DispatchError(SokovanError):
    """The fan-out could not be handed to the broker."""


class AgentdError(SokovanError):
    """The reference agent refused or failed a call; the caller sees it as an RPC user error."""


class InjectedFault(AgentdError):
    """A fault set on purpose by a test or an operator."""


class AgentIdNotFoundError(AgentdError):
    """A call addressed to an agent id this daemon does not serve."""


class UnknownRPCMethod(AgentdError):
    """A call to a method the agent does not serve."""


def describe_error(exc: BaseException, *, with_type: bool = False) -> str:
    """An exception's message for outcomes and logs (`Name: message` with `with_type`).

    Some errors (a bare TimeoutError) have no message; the type name then says what happened.
    """
    message = str(exc)
    if not message:
        return type(exc).__name__
    text = f"{type(exc).__name__}: {message}" if with_type else message
    # Stored in outcomes and status data; agent text inside is cut already, this is a backstop.
    return bounded_text(text, C.STORED_ERROR_MAX_BYTES)
