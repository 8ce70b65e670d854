"""Commands of the reference agent: `run` agents and inject a `fault` into one.

Mounted as `sokovan agent ...`; also `python -m sokovan.agentd ...` without the main CLI.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from sokovan import constants as C
from sokovan.agentd.control import send_fault
from sokovan.agentd.host import HostOptions, serve
from sokovan.agentd.runtime import RuntimeKind
from sokovan.agentd.specs import build_specs, parse_latency
from sokovan.config import SentinelTarget, Settings, load_settings, presence_url_for
from sokovan.errors import SokovanError
from sokovan.redis_clients import async_client
from sokovan.redis_retry import retry_options

app = typer.Typer(
    help="Reference agents that speak the Backend.AI agent RPC, for demos, tests and load.",
    no_args_is_help=True,
)

FAULT_OPS = ("fail", "hang", "answer", "stop_presence", "resume_presence", "silent", "clear")


@app.command()
def run(
    agent_id: Annotated[str, typer.Option("--id", help="Agent id (single agent).")] = "a1",
    port: Annotated[int, typer.Option(help="RPC port; 0 picks a free one.")] = 6001,
    runtime: Annotated[RuntimeKind, typer.Option(help="Where kernels live.")] = RuntimeKind.SIM,
    count: Annotated[int, typer.Option(help="How many agents in this process.")] = 1,
    base_port: Annotated[
        int | None, typer.Option(help="First port of --count agents (default: --port).")
    ] = None,
    id_prefix: Annotated[
        str | None, typer.Option(help="Ids PREFIX1..PREFIXn (default prefix: a).")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind and advertise.")] = "127.0.0.1",
    scaling_group: Annotated[str, typer.Option(help="Scaling group of the agents.")] = "default",
    cpu: Annotated[str, typer.Option(help="CPU capacity (cores).")] = "8",
    mem: Annotated[str, typer.Option(help="Memory capacity, e.g. 32g.")] = "32g",
    latency: Annotated[
        str, typer.Option(help="Per-method delay, e.g. destroy_kernel=0.005,create_kernels=0.01.")
    ] = "",
    redis_url: Annotated[
        str | None, typer.Option(help="Redis/Valkey URL (default: SOKOVAN_REDIS_URL).")
    ] = None,
    presence_interval: Annotated[
        float | None, typer.Option(help="Seconds between presence refreshes.")
    ] = None,
    curve_secret_key_file: Annotated[
        Path | None,
        typer.Option(
            help="ZeroMQ certificate with the agent's CURVE secret key, or a folder of "
            "<agent-id>.key_secret (default: SOKOVAN_CURVE_AGENT_CERT)."
        ),
    ] = None,
    curve_client_key_file: Annotated[
        list[Path] | None,
        typer.Option(
            help="Public certificate of an admitted client (repeatable; default: the public "
            "key of SOKOVAN_CURVE_MANAGER_CERT when SOKOVAN_CURVE_AGENT_CERT is set)."
        ),
    ] = None,
    stats_interval: Annotated[
        float | None,
        typer.Option(
            help="Seconds between kernel statistics writes (default: "
            "SOKOVAN_KERNEL_STATS_INTERVAL)."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="Logging level.")] = "INFO",
) -> None:
    """Serve one or many reference agents until SIGTERM or SIGINT."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,  # the `sokovan` entry point already set commands' quieter level
    )
    settings = load_settings()
    try:
        specs = build_specs(
            agent_id=agent_id,
            port=port,
            count=count,
            base_port=base_port,
            id_prefix=id_prefix,
            runtime=runtime,
            host=host,
            scaling_group=scaling_group,
            cpu=cpu,
            mem=mem,
            latency=parse_latency(latency),
        )
    except SokovanError as e:
        raise typer.BadParameter(str(e)) from e
    broker = redis_url or settings.redis_url
    options = HostOptions(
        redis_url=broker,
        presence_url=presence_url_for(settings.presence_url or broker, settings.presence_db),
        # An explicit --redis-url is one server; otherwise the settings' Sentinels, if any.
        sentinel=None if redis_url else settings.sentinel,
        presence_sentinel=None if redis_url or settings.presence_url else settings.sentinel,
        presence_interval=presence_interval or settings.presence_refresh,
        presence_ttl=settings.presence_ttl,
        stats_url=presence_url_for(settings.presence_url or broker, C.KERNEL_STATS_DB),
        stats_interval=stats_interval or settings.kernel_stats_interval,
        **curve_options(settings, curve_secret_key_file, curve_client_key_file),
    )
    asyncio.run(serve(specs, options))


def curve_options(
    settings: Settings, secret: Path | None, clients: list[Path] | None
) -> dict[str, Any]:
    """CURVE of the agents: the options given, else the settings (agent cert, manager key)."""
    manager = settings.curve_manager_cert
    if secret is None and settings.curve_agent_cert is not None:
        if manager is None and not clients:
            raise typer.BadParameter(
                "SOKOVAN_CURVE_AGENT_CERT is set but not SOKOVAN_CURVE_MANAGER_CERT: "
                "the agents would admit any CURVE client"
            )
        secret = settings.curve_agent_cert
        if not clients and manager is not None:
            clients = [manager]
    return {
        "curve_secret_key_file": secret,
        "curve_client_key_files": tuple(clients or ()),
    }


@app.command()
def fault(
    agent_id: Annotated[str, typer.Argument(help="The agent to change.")],
    op: Annotated[str, typer.Argument(help=f"One of: {', '.join(FAULT_OPS)}.")],
    method: Annotated[
        str | None, typer.Option(help="RPC method for fail/hang/answer/clear; * for all.")
    ] = None,
    kernel: Annotated[
        list[str] | None, typer.Option(help="Only calls naming this kernel id (repeatable).")
    ] = None,
    seconds: Annotated[float, typer.Option(help="How long `hang` sleeps.")] = 0.0,
    message: Annotated[str | None, typer.Option(help="Error message of `fail`.")] = None,
    value: Annotated[
        str, typer.Option(help="JSON reply of `answer`, e.g. null or false.")
    ] = "null",
    redis_url: Annotated[str | None, typer.Option(help="Redis/Valkey URL.")] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for the agent; 0: don't.")] = 10.0,
) -> None:
    """Set or clear a fault of a running agent through Redis."""
    if op not in FAULT_OPS:
        raise typer.BadParameter(f"{op!r} is not one of {', '.join(FAULT_OPS)}")
    body: dict[str, Any] = {"op": op}
    if method is not None:
        body["method"] = method
    if kernel:
        body["kernels"] = kernel
    if op == "hang":
        body["seconds"] = seconds
    if message is not None:
        body["message"] = message
    if op == "answer":
        try:
            body["value"] = json.loads(value)
        except ValueError as e:
            raise typer.BadParameter(f"--value {value!r} is not JSON") from e
    settings = load_settings()
    url = redis_url or settings.redis_url
    sentinel = None if redis_url else settings.sentinel
    try:
        asyncio.run(_send(url, sentinel, agent_id, body, wait or None))
    except (SokovanError, TimeoutError) as e:
        typer.echo(f"fault not applied: {e or 'agent did not answer in time'}", err=True)
        raise typer.Exit(1) from e
    typer.echo(f"{agent_id}: {json.dumps(body)} applied" if wait else f"{agent_id}: queued")


async def _send(
    url: str,
    sentinel: SentinelTarget | None,
    agent_id: str,
    body: dict[str, Any],
    wait: float | None,
) -> None:
    redis = async_client(url, sentinel, max_connections=2, wait=10, **retry_options())
    try:
        await send_fault(redis, agent_id, body, wait=wait)
    finally:
        await redis.aclose()
