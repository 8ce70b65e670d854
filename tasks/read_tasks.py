"""Public reads for a manager: a session, a filtered session list, a run with its items.

Each answers the JSON document the CLI's `--json` prints (sokovan.views), or a refusal
`{"error", "kind", "field"}` for arguments its schema refuses or an unknown id.
"""

from __future__ import annotations

import logging
from typing import Any

from sokovan.admission.parse import parse_call
from sokovan.admission.refusal import Refusal, from_error
from sokovan.admission.schemas import GetRunPayload, GetSessionPayload, ListSessionsPayload
from sokovan.errors import NotFound
from sokovan.types import RunId, SessionId
from sokovan.views import run_document, session_document, session_list_document
from tasks import names
from tasks.base import task
from tasks.runtime import runtime

log = logging.getLogger(__name__)


def _refused(name: str, refusal: Refusal) -> dict[str, Any]:
    log.info("%s refused: %s", name, refusal.error)
    return refusal.to_json()


@task(names.SESSION_GET)
def get_session(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """A session with its kernels, as `sokovan session show --json` prints it."""
    payload = parse_call(GetSessionPayload, args, kwargs)
    if isinstance(payload, Refusal):
        return _refused(names.SESSION_GET, payload)
    try:
        services = runtime().services
        sid = SessionId(payload.session_id)
        return session_document(services.repository.sync, sid, services.settings)
    except NotFound as e:
        return _refused(names.SESSION_GET, from_error(e, "session_id"))


@task(names.SESSION_LIST)
def list_sessions(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Sessions newest first, as `sokovan session list --json` prints them."""
    payload = parse_call(ListSessionsPayload, args, kwargs)
    if isinstance(payload, Refusal):
        return _refused(names.SESSION_LIST, payload)
    return session_list_document(
        runtime().services.repository.sync,
        statuses=payload.statuses,
        agent=payload.agent,
        limit=payload.limit,
    )


@task(names.RUN_GET)
def get_run(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """A run with its counts and items, as `sokovan runs show --json` prints it."""
    payload = parse_call(GetRunPayload, args, kwargs)
    if isinstance(payload, Refusal):
        return _refused(names.RUN_GET, payload)
    try:
        ledger = runtime().services.ledger.sync
        return run_document(ledger, RunId(payload.run_id), payload.items_limit)
    except NotFound as e:
        return _refused(names.RUN_GET, from_error(e, "run_id"))
