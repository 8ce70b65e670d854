"""Reclaim policies per scaling group, from SOKOVAN_RECLAIM_POLICIES (JSON) and the CLI.

`{"default": {...}, "<scaling group>": {...}}`; a group without an entry takes "default";
with neither, its sessions are never reclaimed. Seconds everywhere; 0 turns a limit off.
A policy set with `sokovan reclaim set` (kept in SQL) replaces the group's entry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from sokovan.errors import ConfigError

SETTING = "SOKOVAN_RECLAIM_POLICIES"
# Where a policy set by an operator comes from, in errors and `sokovan reclaim policies`.
SET_BY_CLI = "sokovan reclaim set"
DEFAULT_GROUP = "default"


@dataclass(frozen=True, slots=True)
class ReclaimPolicy:
    """When a scaling group's RUNNING sessions are reclaimed."""

    name: str = DEFAULT_GROUP
    max_lifetime: float = 0.0  # seconds RUNNING before LIFETIME_EXCEEDED; 0: no limit
    idle_timeout: float = 0.0  # seconds without activity before IDLE_TIMEOUT; 0: never
    idle_threshold: float = 1.0  # CPU utilization (percent of a core) below which a kernel idles
    grace_period: float = 0.0  # seconds after start in which nothing is reclaimed
    report_only: bool = False  # record would-reclaim outcomes, terminate nothing
    brake_share: float = 0.5  # above this share of the group's sessions at once: hold

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def body(self) -> dict[str, Any]:
        """The policy as one entry of the setting takes it (every field but the name)."""
        return {k: v for k, v in asdict(self).items() if k != "name"}


_NUMBERS = ("max_lifetime", "idle_timeout", "idle_threshold", "grace_period", "brake_share")


def parse_policies(raw: str) -> dict[str, ReclaimPolicy]:
    """The policies by scaling group; raises ConfigError naming the setting and the field."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{SETTING} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{SETTING} must be a JSON object of scaling group -> policy")
    return {str(group): _policy(str(group), body) for group, body in data.items()}


def effective_policies(setting: str, stored: Mapping[str, str]) -> dict[str, ReclaimPolicy]:
    """The setting's policies, each group set with the CLI replaced by its stored policy."""
    policies = parse_policies(setting)
    for group, raw in stored.items():
        policies[group] = _policy(group, json.loads(raw), f"{SET_BY_CLI}: policy of {group!r}")
    return policies


def changed_policy(
    base: ReclaimPolicy | None, group: str, changes: Mapping[str, Any]
) -> ReclaimPolicy:
    """`base` (else the defaults) with `changes`; raises ConfigError naming a bad field."""
    body = {**(base.body() if base else {}), **changes}
    return _policy(group, body, f"{SET_BY_CLI}: policy of {group!r}")


def _policy(group: str, body: Any, where: str = "") -> ReclaimPolicy:
    where = where or f"{SETTING}[{group!r}]"
    if not isinstance(body, dict):
        raise ConfigError(f"{where} must be a JSON object")
    known = {f.name for f in fields(ReclaimPolicy)} - {"name"}
    unknown = sorted(set(body) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    values: dict[str, Any] = {"name": group}
    for key in _NUMBERS:
        if key not in body:
            continue
        value = body[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: {key} must be a number >= 0, not {value!r}")
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{where}: {key} must be a number >= 0, not {value!r}")
        values[key] = float(value)
    if "report_only" in body:
        if not isinstance(body["report_only"], bool):
            raise ConfigError(f"{where}: report_only must be true or false")
        values["report_only"] = body["report_only"]
    if values.get("brake_share", 0.5) > 1:
        raise ConfigError(f"{where}: brake_share must be between 0 and 1")
    return ReclaimPolicy(**values)


def policy_for(policies: Mapping[str, ReclaimPolicy], scaling_group: str) -> ReclaimPolicy | None:
    """The group's policy, else the default one, else None (never reclaimed)."""
    return policies.get(scaling_group) or policies.get(DEFAULT_GROUP)
