"""`sokovan image`: the image configs sessions may use."""

from __future__ import annotations

import typer

from sokovan.admission.parse import parse_image_name
from sokovan.admission.refusal import Refusal
from sokovan.cli.common import engine, table
from sokovan.db.repository import SchedulerRepository
from sokovan.types import ImageConfig

app = typer.Typer(help="Image configs: add, list.", no_args_is_help=True)


@app.command()
def add(
    canonical: str = typer.Argument(..., help="e.g. cr.backend.ai/stable/python:3.9-ubuntu20.04"),
    architecture: str = typer.Option("x86_64"),
    registry_name: str = typer.Option("cr.backend.ai"),
    registry_url: str = typer.Option("https://cr.backend.ai"),
    local: bool = typer.Option(False, help="The image is built locally (never pulled)."),
    digest: str = typer.Option(""),
) -> None:
    """Adds or updates an image config."""
    refused = parse_image_name(canonical)
    if isinstance(refused, Refusal):
        typer.echo(f"refused: {refused.error}", err=True)
        raise typer.Exit(2)
    SchedulerRepository(engine()).add_image(
        ImageConfig(
            canonical=canonical,
            architecture=architecture,
            registry_name=registry_name,
            registry_url=registry_url,
            is_local=local,
            digest=digest,
        )
    )
    typer.echo(f"image {canonical} ready")


@app.command("list")
def list_images() -> None:
    """Lists image configs."""
    rows = [
        (c.canonical, c.architecture, c.registry_name, "local" if c.is_local else "")
        for c in SchedulerRepository(engine()).image_configs().values()
    ]
    typer.echo(table(("IMAGE", "ARCH", "REGISTRY", ""), rows))
