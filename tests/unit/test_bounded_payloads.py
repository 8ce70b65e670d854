"""Oversized counts in a payload are refused before anything of that size is built."""

from __future__ import annotations

import tracemalloc

import pytest

from sokovan.admission.parse import parse_create
from sokovan.admission.refusal import Refusal
from sokovan.admission.schemas import Limits

IMAGE = "cr.backend.ai/stable/python:3.12-ubuntu22.04"


@pytest.mark.parametrize("agents", [[], ["a1"]])
@pytest.mark.parametrize("cluster_mode", ["single-node", "multi-node"])
def test_a_billion_kernels_is_refused_naming_the_field(
    agents: list[str], cluster_mode: str
) -> None:
    """kernels=10**9 fails alone with a refusal naming `kernels`, and the refusal allocates
    next to nothing (placement lists for it would take gigabytes)."""
    request = {"image": IMAGE, "kernels": 10**9, "agents": agents, "cluster_mode": cluster_mode}
    tracemalloc.start()
    try:
        refused = parse_create(request, Limits())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(refused, Refusal) and refused.field is not None
    assert "kernels" in refused.field, refused
    assert peak < 10 * 2**20
