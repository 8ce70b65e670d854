"""`sokovan tasks dead`: messages taken out of circulation after too many deliveries."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

import typer

from sokovan.bootstrap import build_redis
from sokovan.deadletter import DeadLetter, DeadLetters
from tasks.cli.root import root

T = TypeVar("T")

app = typer.Typer(help="Task messages: the dead-letter list.", no_args_is_help=True)
dead = typer.Typer(help="Messages dead-lettered after too many deliveries.")
app.add_typer(dead, name="dead")


def _with_letters(use: Callable[[DeadLetters], Awaitable[T]]) -> T:
    async def go() -> T:
        redis = build_redis(root().settings)
        try:
            return await use(DeadLetters(redis))
        finally:
            await redis.aclose()

    return asyncio.run(go())


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")


@dead.callback(invoke_without_command=True)
def list_dead(ctx: typer.Context) -> None:
    """Lists dead-lettered messages, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    letters = _with_letters(lambda d: d.list())
    if not letters:
        typer.echo("no dead-lettered task messages")
        return
    # One block per message: ids, reasons and arguments are too long for table cells.
    for d in letters:
        run = "-" if d.run_id is None else d.run_id
        typer.echo(f"{d.task_id}  {d.task_name}  run={run}  deliveries={d.deliveries}")
        typer.echo(f"    at {_when(d.at)} UTC: {d.reason}")
        typer.echo(f"    {d.args_repr}")


def _take(task_id: str) -> DeadLetter:
    letter = _with_letters(lambda d: d.take(task_id))
    if letter is None:
        typer.echo(f"no dead-lettered message with task id {task_id}", err=True)
        raise typer.Exit(1)
    return letter


@dead.command("drop")
def drop(
    task_id: str = typer.Argument(..., help="Task id, as `sokovan tasks dead` lists it."),
) -> None:
    """Removes a dead-lettered message for good."""
    letter = _take(task_id)
    typer.echo(f"dropped {letter.task_name}[{letter.task_id}]")


@dead.command("retry")
def retry(
    task_id: str = typer.Argument(..., help="Task id, as `sokovan tasks dead` lists it."),
) -> None:
    """Sends a dead-lettered message again, as a new task (outside its original fan-out)."""
    letter = _take(task_id)
    if letter.message is None:
        _with_letters(lambda d: d.add(letter))  # nothing to resend: keep it listed
        typer.echo(f"{letter.task_id}: its arguments were too large to keep", err=True)
        raise typer.Exit(1)
    result = root().app.send_task(
        letter.task_name,
        args=letter.message.get("args") or [],
        kwargs=letter.message.get("kwargs") or {},
    )
    typer.echo(f"sent {letter.task_name} again as task {result.id}")
