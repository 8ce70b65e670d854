"""Calls per second of CallosumAgentClient beside a bare callosum Peer, on the same agent.

By default the agent is a minimal callosum server started in this process that answers
`ping` on the same wire; `--addr` points both clients at a running agent instead
(a reference agent, or a real Backend.AI agent).

    python -m bench.rpc [--sequential 2000] [--concurrent 5000] [--concurrency 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from callosum.lower.zeromq import ZeroMQAddress, ZeroMQRPCTransport
from callosum.rpc import Peer, RPCMessage

from sokovan.agent import wire
from sokovan.agent.client import CallosumAgentClient
from sokovan.types import AgentId

Call = Callable[[], Awaitable[Any]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _ping(request: RPCMessage) -> Any:
    body: Any = request.body
    return body["args"][0]


@contextlib.asynccontextmanager
async def in_process_agent() -> AsyncIterator[str]:
    """A callosum server answering ping on the agent wire, for as long as the block runs."""
    addr = f"tcp://127.0.0.1:{free_port()}"
    peer = Peer(
        bind=ZeroMQAddress(addr),
        transport=ZeroMQRPCTransport,
        serializer=wire.packb,
        deserializer=wire.unpackb,
    )
    peer.handle_function("ping", _ping)
    async with peer:
        yield addr


async def sequential(call: Call, count: int) -> float:
    began = time.perf_counter()
    for _ in range(count):
        await call()
    return count / (time.perf_counter() - began)


async def concurrent(call: Call, count: int, width: int) -> float:
    per_worker, extra = divmod(count, width)

    async def worker(n: int) -> None:
        for _ in range(n):
            await call()

    began = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for i in range(width):
            tg.create_task(worker(per_worker + (1 if i < extra else 0)))
    return count / (time.perf_counter() - began)


async def measure(addr: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    ours = CallosumAgentClient(AgentId("bench"), addr, call_timeout=60)
    await ours.connect()
    bare = Peer(
        connect=ZeroMQAddress(addr),
        transport=ZeroMQRPCTransport,
        serializer=wire.packb,
        deserializer=wire.unpackb,
    )
    await bare.__aenter__()

    async def ours_call() -> Any:
        return await ours.ping("x")

    async def bare_call() -> Any:
        return await bare.invoke("ping", {"args": ["x"], "kwargs": {}})

    results: dict[str, dict[str, float]] = {}
    try:
        for name, call in (("bare callosum Peer", bare_call), ("CallosumAgentClient", ours_call)):
            await sequential(call, min(100, args.sequential))  # warm up
            results[name] = {
                "sequential": await sequential(call, args.sequential),
                "concurrent": await concurrent(call, args.concurrent, args.concurrency),
            }
    finally:
        await ours.close()
        await bare.__aexit__(None, None, None)
    return results


def report(results: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    base, ours = results["bare callosum Peer"], results["CallosumAgentClient"]
    print(f"{'client':<22}{'sequential calls/s':>20}{f'{args.concurrency} concurrent calls/s':>26}")
    for name, row in results.items():
        print(f"{name:<22}{row['sequential']:>20,.0f}{row['concurrent']:>26,.0f}")
    print(
        f"{'ratio ours/bare':<22}{ours['sequential'] / base['sequential']:>20.2f}"
        f"{ours['concurrent'] / base['concurrent']:>26.2f}"
    )


async def main(args: argparse.Namespace) -> None:
    if args.addr:
        report(await measure(args.addr, args), args)
        return
    async with in_process_agent() as addr:
        report(await measure(addr, args), args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=2000, help="calls made one by one")
    parser.add_argument("--concurrent", type=int, default=5000, help="calls made concurrently")
    parser.add_argument("--concurrency", type=int, default=100, help="calls in flight at once")
    parser.add_argument("--addr", default="", help="tcp://host:port of a running agent")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
