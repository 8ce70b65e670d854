"""Image names and the ImageConfig mapping agents read (no registry credentials in it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sokovan.types import JSON, ImageConfig


def image_project(config: ImageConfig) -> str | None:
    """The project part of a canonical name (`stable` in `cr.backend.ai/stable/python:3.11`)."""
    name = config.canonical.split(":", 1)[0]
    prefix = f"{config.registry_name}/"
    if not name.startswith(prefix):
        return None
    parts = name[len(prefix) :].split("/")
    return "/".join(parts[:-1]) or None


def image_config_to_json(config: ImageConfig, auto_pull: str) -> JSON:
    """The agent's ImageConfig mapping; registry credentials are never put in it."""
    return {
        "canonical": config.canonical,
        "project": image_project(config),
        "architecture": config.architecture,
        "digest": config.digest,
        "repo_digest": None,
        "registry": {
            "name": config.registry_name,
            "url": config.registry_url,
            "username": None,
            "password": None,
        },
        "labels": dict(config.labels),
        "is_local": config.is_local,
        "auto_pull": auto_pull,
    }


def image_config_from_json(data: Mapping[str, Any]) -> ImageConfig:
    """Rebuilds an ImageConfig from its agent-shaped JSON mapping."""
    registry = data.get("registry") or {}
    return ImageConfig(
        canonical=str(data["canonical"]),
        architecture=str(data.get("architecture") or "x86_64"),
        registry_name=str(registry.get("name") or ""),
        registry_url=str(registry.get("url") or ""),
        is_local=bool(data.get("is_local", False)),
        digest=str(data.get("digest") or ""),
        labels={str(k): str(v) for k, v in (data.get("labels") or {}).items()},
    )
