"""The CLI's one error path: every failure becomes one line on stderr and an exit code.

The line starts with what happened: `refused:` (bad input or a refusal), `unreachable:`,
`bad setting:` or `failed:`; a malformed option names the command and the option.
Exit codes: 0 done, 1 refused or failed (including a skipped, held, partial or failed run),
2 bad input (an argument, an option or a setting), 3 unreachable (broker, database, workers).
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
import typer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError as RedisResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from typer import Abort, Exit
from typer._click.core import Context
from typer._click.exceptions import ClickException, NoArgsIsHelpError
from typer.core import TyperGroup

from sokovan.admission.refusal import INVALID
from sokovan.errors import ConfigError, InvalidRequest, NotFound, SokovanError

log = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_UNREACHABLE = 3


class CliError(Exception):
    """A failure the CLI reports as one line with its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class BadInput(CliError):
    """An argument or option value that cannot be used (exit 2)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"refused: {message}", EXIT_BAD_INPUT)


class Refused(CliError):
    """A well-formed request the scheduler refused by its state (exit 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"refused: {message}", EXIT_FAILED)


class Unreachable(CliError):
    """The broker, the database or the workers did not answer (exit 3)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"unreachable: {message}", EXIT_UNREACHABLE)


def refusal(answer: dict[str, Any]) -> CliError:
    """A task's refusal answer: exit 2 when the input broke its schema, 1 when state refused."""
    code = EXIT_BAD_INPUT if answer.get("kind") == INVALID else EXIT_FAILED
    return CliError(f"refused: {answer.get('error')}", code)


def _unreachable_types() -> tuple[type[BaseException], ...]:
    """Connection failures of every client the CLI uses; kombu and celery only if loaded."""
    types: list[type[BaseException]] = [
        RedisConnectionError,
        RedisTimeoutError,
        sa.exc.OperationalError,
        ConnectionError,
    ]
    try:
        from celery.exceptions import TimeoutError as CeleryTimeout
        from kombu.exceptions import OperationalError as KombuOperationalError

        types += [CeleryTimeout, KombuOperationalError]
    except ImportError:  # pragma: no cover - both ship with the package
        pass
    return tuple(types)


def classify(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one line an exception is reported with."""
    if isinstance(exc, CliError):
        return exc.code, str(exc)
    if isinstance(exc, ConfigError):
        return EXIT_BAD_INPUT, f"bad setting: {exc}"
    if isinstance(exc, InvalidRequest | NotFound):
        return EXIT_FAILED, f"refused: {exc}"
    if isinstance(exc, SokovanError):
        return EXIT_FAILED, f"failed: {exc}"
    if _read_only(exc):
        # The database answered; it refuses writes (a read-only file, mount or replica).
        return EXIT_FAILED, f"failed: the database is read-only: {_first_line(exc)}"
    if isinstance(exc, OverflowError):
        return EXIT_BAD_INPUT, f"refused: a number is out of range: {_first_line(exc)}"
    if refused := _broker_refusal(exc):
        # The broker answered, with an error (its memory full, a read-only replica): it is
        # reachable, and waiting will not help.
        return EXIT_FAILED, f"failed: the broker refused it: {_first_line(refused)}"
    if isinstance(exc, _unreachable_types()):
        return EXIT_UNREACHABLE, f"unreachable: {_first_line(exc)}"
    return EXIT_FAILED, f"failed: {type(exc).__name__}: {_first_line(exc)}"


def _broker_refusal(exc: BaseException) -> BaseException | None:
    """The broker's error reply behind `exc` (kombu wraps it as a connection error), if any."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, RedisResponseError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def _read_only(exc: BaseException) -> bool:
    """Whether the database refused a write because it is read-only."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    text = str(exc.orig).lower()
    return "readonly" in text or "read-only" in text or "read only" in text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def report(message: str) -> None:
    """Writes one line to stderr."""
    typer.echo(" ".join(message.split()), err=True)


class OneLineErrors(TyperGroup):
    """The root group: commands' exceptions and usage errors become one line and a code."""

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except (Exit, Abort, NoArgsIsHelpError):
            raise
        except ClickException as e:
            # Typer would draw a box of several lines; operators' scripts want one.
            where = getattr(e, "ctx", None)
            report(f"{where.command_path if where else 'sokovan'}: {e.format_message()}")
            raise Exit(e.exit_code) from e
        except KeyboardInterrupt as e:
            raise Exit(130) from e
        except Exception as e:
            code, line = classify(e)
            log.debug("command failed", exc_info=True)
            report(line)
            raise Exit(code) from e
