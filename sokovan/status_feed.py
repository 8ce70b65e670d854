"""The session status feed as a Redis stream a manager reads with any Redis client.

One entry per session status move, XADDed to `sokovan:session-status` on the broker's
server, the stream trimmed to about STATUS_STREAM_MAXLEN entries. Every field is a string:

    v            the format version ("1")
    session_id   the session's UUID
    status       the status it moved to (PENDING ... TERMINATED, CANCELLED, ERROR)
    status_info  why, when known (e.g. USER_REQUESTED, FAILED_TO_START), else ""
    at           when, ISO 8601 in UTC

Entry ids are Redis's (milliseconds-sequence), increasing, so a reader resumes after the
last id it saw (XREAD ... STREAMS sokovan:session-status <id>).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from sokovan import constants as C
from sokovan.db.feed import StatusChange

log = logging.getLogger(__name__)

# The feed's stream is trimmed (approximately) to this many entries.
STATUS_STREAM_MAXLEN: Final = 100_000
# A feed write waits at most this long: the SQL move is the truth, the feed a notification.
STATUS_STREAM_TIMEOUT_SEC: Final = 1.0


def entry_fields(change: StatusChange) -> dict[str, str]:
    """The stream entry of one change (the documented field format)."""
    return {
        "v": C.STATUS_STREAM_FORMAT,
        "session_id": str(change.session_id),
        "status": change.status,
        "status_info": change.status_info or "",
        "at": change.at.isoformat(),
    }


class RedisStatusFeed:
    """Publishes committed status changes with XADD; a Redis failure is logged, not raised."""

    def __init__(
        self,
        url: str,
        *,
        key: str = C.STATUS_STREAM_KEY,
        maxlen: int = STATUS_STREAM_MAXLEN,
        timeout: float = STATUS_STREAM_TIMEOUT_SEC,
    ) -> None:
        self.key = key
        self.maxlen = maxlen
        # Few connections, waited for: a worker's threads publish at once after a burst.
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=4,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        self._client = redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 1))

    def publish(self, changes: Sequence[StatusChange]) -> None:
        if not changes:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for change in changes:
                pipe.xadd(self.key, entry_fields(change), maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]
            pipe.execute()
        except (redis.RedisError, OSError) as e:
            log.warning("status feed: %d change(s) not published: %s", len(changes), e)

    def close(self) -> None:
        self._client.close()
