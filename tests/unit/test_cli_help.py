"""The CLI's surface: help on every option and argument, enum options as choices."""

from __future__ import annotations

from collections.abc import Iterator

import typer
from typer.testing import CliRunner

from tasks.cli import app


def commands(group: object, path: str = "sokovan") -> Iterator[tuple[str, object]]:
    """Every leaf command with its full path."""
    subs = getattr(group, "commands", None)
    if not subs:
        yield path, group
        return
    for name, sub in subs.items():
        yield from commands(sub, f"{path} {name}")


def test_every_option_and_argument_has_help() -> None:
    """`--help` of every command explains each of its parameters."""
    root = typer.main.get_command(app)
    missing = [
        f"{path} {param.name}"
        for path, command in commands(root)
        for param in getattr(command, "params", [])
        if param.name != "help" and not getattr(param, "help", None)
    ]
    assert not missing, missing
    assert len(list(commands(root))) >= 20


def test_enum_options_are_choices() -> None:
    """--cluster-mode and --network-type list their values in help and refuse others."""
    out = CliRunner().invoke(app, ["session", "create", "--help"], env={"COLUMNS": "200"}).output
    for value in ("single-node", "multi-node", "volatile", "persistent", "host"):
        assert value in out, out
