"""The worker's consumer: refused messages logged without their body (QuietConsumer), and a
broker lost under the worker never ends it.

When Valkey dies, Celery collects and closes the lost connection, and kombu releases its
transport (`transport.client = None`). Two things can still reach that transport, and each
raised AttributeError (`'NoneType' object has no attribute 'hostname'`), which Celery does
not take for a connection error, so the worker exited with "Unrecoverable error":
- the close itself, when the consumer was waiting on the queue (BRPOP) while holding an
  unacknowledged message: the first close fails reading the BRPOP from the dead socket, the
  second tries to put the message back through the released transport;
- the acknowledgement of a task that was running during the loss (acks late), sent on the
  old channel when the task ends.
Here the first is logged (the message stays in the broker's unacked set and comes back after
the visibility timeout, as it would had the restore met the dead broker), and the released
transport gets its connection back, so a late acknowledgement connects again, or fails with a
connection error that Celery logs ("Couldn't ack"); the consumer reconnects as usual.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from tasks.signing import QuietConsumer

log = logging.getLogger(__name__)

# The worker_consumer setting.
CONSUMER: Final = "tasks.consumer:WorkerConsumer"


class WorkerConsumer(QuietConsumer):
    """QuietConsumer that survives the close of a connection its broker died under."""

    def on_connection_error_after_connected(self, exc: Any) -> None:
        """Celery's handling of a lost broker, minus the AttributeErrors of a released
        transport (see the module's docstring)."""
        connection = self.connection
        transport = None if connection is None else connection.transport
        try:
            super().on_connection_error_after_connected(exc)
        except AttributeError as e:
            if transport is None or transport.client is not None:
                raise
            log.warning(
                "broker connection lost (%r); closing it failed on its released transport "
                "(%r); its unacknowledged messages return after the visibility timeout",
                exc,
                e,
            )
        finally:
            if transport is not None and transport.client is None:
                transport.client = connection
