"""`sokovan reclaim policies|set|unset`: each scaling group's reclaim policy.

A policy set here is kept in SQL and replaces the group's entry of SOKOVAN_RECLAIM_POLICIES
from the handler's next run on; `unset` gives the group back to the setting.
"""

from __future__ import annotations

import json
from typing import Any

import typer

from sokovan.errors import ConfigError
from sokovan.reclaim_policy import (
    DEFAULT_GROUP,
    ReclaimPolicy,
    changed_policy,
    effective_policies,
    policy_for,
)
from tasks.cli.common import JsonOption, print_json, print_table
from tasks.cli.errors import BadInput, Refused
from tasks.cli.root import root
from tasks.cli.session_ops import parse_age

app = typer.Typer(help="Reclaim of idle and over-age sessions.", no_args_is_help=True)

GroupArgument = typer.Argument(..., help="The scaling group ('default': groups without their own).")
HEADER = ("GROUP", "SOURCE", "MAX LIFETIME", "IDLE TIMEOUT", "IDLE BELOW", "GRACE", "REPORT")


def _limit(seconds: float) -> str:
    return f"{seconds:g}s" if seconds else "-"


def _row(group: str, source: str, p: ReclaimPolicy) -> tuple[str, ...]:
    shown = group + (" (groups without their own)" if group == DEFAULT_GROUP else "")
    return (
        shown,
        source,
        _limit(p.max_lifetime),
        _limit(p.idle_timeout),
        f"{p.idle_threshold:g}%",
        _limit(p.grace_period),
        "yes" if p.report_only else "no",
        f"{p.brake_share:g}",
    )


@app.command("policies")
def policies_cmd(as_json: bool = JsonOption) -> None:
    """Prints each scaling group's reclaim policy: set here, else SOKOVAN_RECLAIM_POLICIES."""
    stored = root().repository.stored_reclaim_policies()
    policies = effective_policies(root().settings.reclaim_policies, stored)
    source = {g: "set" if g in stored else "setting" for g in policies}
    if as_json:
        docs = {g: {**p.to_json(), "source": source[g]} for g, p in policies.items()}
        print_json({"policies": docs})
        return
    if not policies:
        typer.echo("no reclaim policy: no session is reclaimed (SOKOVAN_RECLAIM_POLICIES)")
        return
    rows = [_row(g, source[g], p) for g, p in sorted(policies.items())]
    print_table((*HEADER, "BRAKE"), rows)


@app.command("set")
def set_cmd(
    group: str = GroupArgument,
    max_lifetime: str | None = typer.Option(None, help="RUNNING longer ends it: 8h, 2d; 0: off."),
    idle_timeout: str | None = typer.Option(None, help="Idle this long ends it: 30m, 2h; 0: off."),
    idle_threshold: float | None = typer.Option(
        None, help="CPU percent of a core below which a kernel idles."
    ),
    grace_period: str | None = typer.Option(None, help="Nothing reclaimed this soon after start."),
    report_only: bool | None = typer.Option(
        None, "--report-only/--enforce", help="Only record what it would reclaim."
    ),
    brake_share: float | None = typer.Option(None, help="Above this share at once: hold (0..1)."),
    as_json: bool = JsonOption,
) -> None:
    """Sets a group's reclaim policy: the options given change its current one."""
    if not group.strip() or len(group) > 64:
        raise BadInput(f"scaling group: 1 to 64 characters, got {group!r}")
    changes: dict[str, Any] = {
        "max_lifetime": _seconds(max_lifetime, "--max-lifetime"),
        "idle_timeout": _seconds(idle_timeout, "--idle-timeout"),
        "idle_threshold": idle_threshold,
        "grace_period": _seconds(grace_period, "--grace-period"),
        "report_only": report_only,
        "brake_share": brake_share,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        raise BadInput("give at least one option to change (see `sokovan reclaim set --help`)")
    repo = root().repository
    current = policy_for(
        effective_policies(root().settings.reclaim_policies, repo.stored_reclaim_policies()), group
    )
    try:
        policy = changed_policy(current, group, changes)
    except ConfigError as e:
        raise BadInput(str(e)) from None
    repo.store_reclaim_policy(group, json.dumps(policy.body()))
    if as_json:
        print_json({"scaling_group": group, "policy": policy.to_json(), "source": "set"})
        return
    print_table((*HEADER, "BRAKE"), [_row(group, "set", policy)])


@app.command("unset")
def unset_cmd(group: str = GroupArgument, as_json: bool = JsonOption) -> None:
    """Forgets a group's policy set here: SOKOVAN_RECLAIM_POLICIES applies to it again."""
    repo = root().repository
    if not repo.drop_reclaim_policy(group):
        raise Refused(f"no reclaim policy was set for scaling group {group!r}")
    policies = effective_policies(root().settings.reclaim_policies, repo.stored_reclaim_policies())
    policy = policy_for(policies, group)
    if as_json:
        doc = None if policy is None else policy.to_json()
        print_json({"scaling_group": group, "policy": doc})
        return
    after = "none applies: nothing is reclaimed" if policy is None else f"{policy.name!r} applies"
    typer.echo(f"reclaim policy of {group} unset; {after}")


def _seconds(text: str | None, option: str) -> float | None:
    return None if text is None else parse_age(text, option).total_seconds()
