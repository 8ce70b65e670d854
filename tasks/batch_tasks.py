"""Many sessions in one message: one task and one run (image pull, or terminate) for the lot."""

from __future__ import annotations

from typing import Any

from sokovan.admission.batch import create_sessions as create
from sokovan.admission.batch import terminate_sessions as terminate
from sokovan.admission.schemas import Limits
from tasks import names
from tasks.base import task
from tasks.runtime import runtime


@task(names.SESSIONS_CREATE)
def create_sessions(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Validates and stores every session, then starts one image pull for the placed ones."""
    rt = runtime()
    s = rt.services
    limits = Limits(
        max_kernels=s.settings.max_kernels_per_session,
        handlers=frozenset(s.coordinator.handlers),
    )
    return rt.run(create(s.repository, s.coordinator, limits, s.secret_environ, args, kwargs))


@task(names.SESSIONS_TERMINATE)
def terminate_sessions(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Cancels the PENDING sessions and terminates the live ones, with one terminate run."""
    s = runtime().services
    return runtime().run(terminate(s.repository, s.coordinator, args, kwargs))
