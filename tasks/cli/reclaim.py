"""`sokovan reclaim policies`: the effective reclaim policy of each scaling group."""

from __future__ import annotations

import typer

from sokovan.reclaim_policy import DEFAULT_GROUP, parse_policies
from tasks.cli.common import JsonOption, print_json, print_table
from tasks.cli.root import root

app = typer.Typer(help="Reclaim of idle and over-age sessions.", no_args_is_help=True)


def _limit(seconds: float) -> str:
    return f"{seconds:g}s" if seconds else "-"


@app.command("policies")
def policies_cmd(as_json: bool = JsonOption) -> None:
    """Prints each scaling group's reclaim policy (SOKOVAN_RECLAIM_POLICIES)."""
    policies = parse_policies(root().settings.reclaim_policies)
    if as_json:
        print_json({"policies": {g: p.to_json() for g, p in policies.items()}})
        return
    if not policies:
        typer.echo("no reclaim policy: no session is reclaimed (SOKOVAN_RECLAIM_POLICIES)")
        return
    rows = [
        (
            group + (" (groups without their own)" if group == DEFAULT_GROUP else ""),
            _limit(p.max_lifetime),
            _limit(p.idle_timeout),
            f"{p.idle_threshold:g}%",
            _limit(p.grace_period),
            "yes" if p.report_only else "no",
            f"{p.brake_share:g}",
        )
        for group, p in sorted(policies.items())
    ]
    header = ("GROUP", "MAX LIFETIME", "IDLE TIMEOUT", "IDLE BELOW", "GRACE", "REPORT", "BRAKE")
    print_table(header, rows)
