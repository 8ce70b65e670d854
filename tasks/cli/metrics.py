"""`sokovan metrics`: the ledger's Prometheus exporter."""

from __future__ import annotations

import threading

import typer

from sokovan import constants as C
from sokovan.bootstrap import build_primary_probe
from sokovan.metrics import serve
from tasks.cli.handlers import HANDLERS
from tasks.cli.root import root


def metrics(
    port: int = typer.Option(
        None, min=1, max=65535, help="HTTP port (default: SOKOVAN_METRICS_PORT)."
    ),
    host: str = typer.Option(None, help="Address to listen on (default: SOKOVAN_METRICS_HOST)."),
) -> None:
    """Serves the ledger's Prometheus metrics on /metrics until Ctrl-C."""
    r = root()
    s = r.settings
    port = port or s.metrics_port
    host = host or s.metrics_host
    from tasks.cli.up import ensure_free

    ensure_free("metrics", port, "SOKOVAN_METRICS_PORT", host)
    # The command's small pool: the exporter reads two list lengths per scrape, nothing more.
    primary = build_primary_probe(s, timeout=C.PROCESS_REDIS_TIMEOUT_SEC)
    server, _ = serve(r.ledger, r.stats, port, host, HANDLERS, redis=r.redis, primary=primary)
    typer.echo(f"ledger metrics on http://{host}:{port}/metrics")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
