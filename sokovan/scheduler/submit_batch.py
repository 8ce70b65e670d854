"""Many submissions under one placement lock per scaling group: one read of capacity each."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from sokovan.db.repository import SchedulerRepository, SessionInserts
from sokovan.errors import SokovanError, UnknownImage
from sokovan.ports import SecretBinder
from sokovan.records import SessionRequest, Submitted
from sokovan.scheduler.submit import store_placed
from sokovan.types import SessionStatus


def submit_sessions(
    repo: SchedulerRepository,
    requests: Sequence[SessionRequest],
    secrets: SecretBinder | None = None,
) -> list[Submitted | SokovanError]:
    """Places and stores each request as `submit_session` would; one result per request.

    The requests of one scaling group share one placement transaction (the lock, the read
    of free capacity), and each placement counts the ones before it. A refused request gets
    its error in its place; the others are stored all the same.
    """
    known = set(repo.image_configs(sorted({r.image for r in requests})))
    results: list[Submitted | SokovanError | None] = [None] * len(requests)
    by_group: dict[str, list[int]] = {}
    for i, request in enumerate(requests):
        by_group.setdefault(request.scaling_group, []).append(i)
    for group, indexes in by_group.items():
        named = sorted({a for i in indexes for a in requests[i].agents})
        with repo.placement(group, named) as view:
            # Rows of the group's sessions, written in two statements before the commit.
            inserts = SessionInserts()
            for i in indexes:
                request = requests[i]
                if request.image not in known:
                    message = f"image {request.image!r} has no image config (sokovan image add)"
                    results[i] = UnknownImage(message, field="image")
                    continue
                try:
                    results[i] = store_placed(repo, request, view, secrets, inserts)
                except SokovanError as e:
                    results[i] = e
                    continue
                if results[i].status == SessionStatus.PENDING:  # type: ignore[union-attr]
                    view = dataclasses.replace(view, pending=view.pending + 1)
            repo.insert_sessions(view.conn, inserts)
    return [r for r in results if r is not None]
