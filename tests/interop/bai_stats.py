"""Runs Backend.AI's own stat code (in the bai-agent venv) on kernel statistics in Valkey.

    python bai_stats.py ADDR DB '{"op": "write", "kernels": {"<id>": <millicores>}}'
    python bai_stats.py ADDR DB '{"op": "read", "kernels": ["<id>"]}'

`write` builds each kernel's `cpu_util` as the agent's stat collector does (a Metric updated
with a Measurement, serialized, msgpack per kernel) and stores it with the collector's own
call, ValkeyStatClient.set_multiple_keys; `read` is the stat client's get_kernel_statistics.
Prints one JSON line. Imports only the agent's packages, so it runs under the agent's Python.
"""

from __future__ import annotations

import asyncio
import json
import sys
from decimal import Decimal
from typing import Any


def _cpu_util(millicores: float) -> Any:
    from ai.backend.agent.stats import (  # type: ignore[import-not-found]
        Measurement,
        Metric,
        MetricTypes,
        MovingStatistics,
    )

    metric = Metric(
        key="cpu_util",
        type=MetricTypes.UTILIZATION,
        unit_hint="millicores",
        stats=MovingStatistics(),
        stats_filter=frozenset({"avg", "max"}),
        current=Decimal(0),
        capacity=Decimal(1000),
    )
    metric.update(Measurement(Decimal(str(millicores)), capacity=Decimal(1000)))
    return metric.to_serializable_dict()


async def main(addr: str, db: int, request: dict[str, Any]) -> dict[str, Any]:
    import msgpack  # type: ignore[import-untyped,unused-ignore]
    from ai.backend.common.clients.valkey_client.valkey_stat.client import (  # type: ignore[import-not-found]
        ValkeyStatClient,
    )
    from ai.backend.common.types import ValkeyTarget  # type: ignore[import-not-found]

    client = await ValkeyStatClient.create(
        ValkeyTarget(addr=addr), db_id=db, human_readable_name="sokovan.interop"
    )
    try:
        if request["op"] == "write":
            values = {
                kid: msgpack.packb({"cpu_util": _cpu_util(float(mc))})
                for kid, mc in request["kernels"].items()
            }
            await client.set_multiple_keys(values)
            return {"ok": True}
        return {kid: await client.get_kernel_statistics(kid) for kid in request["kernels"]}
    finally:
        await client.close()


if __name__ == "__main__":
    reply = asyncio.run(main(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])))
    print(json.dumps(reply, default=str))
