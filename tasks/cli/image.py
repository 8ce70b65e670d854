"""`sokovan image`: the image configs sessions may use."""

from __future__ import annotations

import typer

from sokovan.admission.parse import parse_image_name
from sokovan.admission.refusal import Refusal
from sokovan.types import ImageConfig
from tasks.cli.common import JsonOption, print_json, print_table
from tasks.cli.errors import BadInput
from tasks.cli.root import root

app = typer.Typer(help="Image configs: add, list.", no_args_is_help=True)


@app.command()
def add(
    canonical: str = typer.Argument(..., help="e.g. cr.backend.ai/stable/python:3.9-ubuntu20.04"),
    architecture: str = typer.Option("x86_64", help="CPU architecture of the image."),
    registry_name: str = typer.Option("cr.backend.ai", help="Registry the image comes from."),
    registry_url: str = typer.Option("https://cr.backend.ai", help="That registry's URL."),
    local: bool = typer.Option(False, help="The image is built locally (never pulled)."),
    digest: str = typer.Option("", help="Image digest (sha256:...), compared when pulling."),
) -> None:
    """Adds or updates an image config."""
    refused = parse_image_name(canonical)
    if isinstance(refused, Refusal):
        raise BadInput(refused.error)
    root().repository.add_image(
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
def list_images(as_json: bool = JsonOption) -> None:
    """Lists image configs."""
    configs = list(root().repository.image_configs().values())
    if as_json:
        print_json(
            {
                "images": [
                    {
                        "canonical": c.canonical,
                        "architecture": c.architecture,
                        "registry_name": c.registry_name,
                        "registry_url": c.registry_url,
                        "is_local": c.is_local,
                        "digest": c.digest,
                    }
                    for c in configs
                ]
            }
        )
        return
    rows = [
        (c.canonical, c.architecture, c.registry_name, "local" if c.is_local else "")
        for c in configs
    ]
    print_table(("IMAGE", "ARCH", "REGISTRY", "LOCAL"), rows)
