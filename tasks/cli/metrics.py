"""`sokovan metrics`: the ledger's Prometheus exporter."""

from __future__ import annotations

import threading

import redis
import typer

from sokovan.metrics import serve
from tasks.cli.common import engine, settings
from tasks.cli.handlers import HANDLERS


def metrics(
    port: int = typer.Option(None, help="HTTP port (default: SOKOVAN_METRICS_PORT)."),
    host: str = typer.Option(None, help="Address to listen on (default: SOKOVAN_METRICS_HOST)."),
) -> None:
    """Serves the ledger's Prometheus metrics on /metrics until Ctrl-C."""
    s = settings()
    port = port or s.metrics_port
    host = host or s.metrics_host
    from tasks.cli.up import ensure_free

    ensure_free("metrics", port, "SOKOVAN_METRICS_PORT", host)
    # Its own small client: the exporter reads two list lengths per scrape, nothing more.
    client = redis.Redis.from_url(s.redis_url, socket_timeout=1, socket_connect_timeout=1)
    server, _ = serve(engine(s), port, host, HANDLERS, redis=client)
    typer.echo(f"ledger metrics on http://{host}:{port}/metrics")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        client.close()
