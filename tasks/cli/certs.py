"""`sokovan certs`: signing material for task messages."""

from __future__ import annotations

from pathlib import Path

import typer

from sokovan.agent.curve import create_curve_certificates
from sokovan.constants import SIGNING_CERT_DAYS
from sokovan.signing_files import KEY_FILE, create_signing_files
from tasks.cli.root import root

app = typer.Typer(help="Certificates that sign task messages.", no_args_is_help=True)


@app.command("init")
def init(
    folder: Path = typer.Option(
        None, "--dir", help="Where to write (default: SOKOVAN_TASK_SIGNING_DIR or var/signing)."
    ),
    name: str = typer.Option("sokovan", help="The certificate's common name."),
    days: int = typer.Option(SIGNING_CERT_DAYS, help="Days the certificate is valid."),
) -> None:
    """Makes a private key, a self-signed certificate and a trusted store holding it."""
    s = root().settings
    target = folder or s.task_signing_dir or s.var_dir / "signing"
    if (target / KEY_FILE).exists():
        typer.echo(f"{target / KEY_FILE} exists already; nothing written", err=True)
        raise typer.Exit(1)
    files = create_signing_files(target, name, days)
    typer.echo(f"key {files.key} (mode 600), certificate {files.cert}, trusted store {files.store}")
    typer.echo(f"sign and verify with: SOKOVAN_TASK_SIGNING_DIR={target.resolve()}")
    typer.echo("other senders: add their certificates to the trusted store of every worker")


@app.command("curve")
def curve(
    folder: Path = typer.Option(None, "--dir", help="Where to write (default: var/curve)."),
    agents: str = typer.Option("a1,a2", help="Agent ids, comma-separated."),
) -> None:
    """Makes ZeroMQ CURVE certificates: the manager's, and one per reference agent."""
    target = folder or root().settings.var_dir / "curve"
    if (target / "manager.key_secret").exists():
        typer.echo(f"{target / 'manager.key_secret'} exists already; nothing written", err=True)
        raise typer.Exit(1)
    ids = [a.strip() for a in agents.split(",") if a.strip()]
    printed = create_curve_certificates(target, ids)
    typer.echo(f"CURVE certificates of the manager and agents {', '.join(ids)} in {target}")
    for name, value in printed.items():
        typer.echo(f"{name}={value}")
