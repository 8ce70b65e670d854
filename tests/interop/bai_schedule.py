"""Runs Backend.AI's own schedule client (in the bai-agent venv) for one operation.

    python bai_schedule.py ADDR DB '{"op": "update", "kernels": {"<id>": true}}'
    python bai_schedule.py ADDR DB '{"op": "read", "kernels": ["<id>"], "agent": "<id>"}'

Prints one JSON line: what Backend.AI's client returned. Imports only the agent's packages,
so it runs under the agent's Python, not ours.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from typing import Any


async def main(addr: str, db: int, request: dict[str, Any]) -> dict[str, Any]:
    # Backend.AI's packages exist only in the agent's venv, where this file runs.
    from ai.backend.common.clients.valkey_client.valkey_schedule import (  # type: ignore[import-not-found]
        ValkeyScheduleClient,
    )
    from ai.backend.common.types import (  # type: ignore[import-not-found]
        AgentId,
        KernelId,
        ValkeyTarget,
    )

    client = await ValkeyScheduleClient.create(
        ValkeyTarget(addr=addr), db_id=db, human_readable_name="sokovan.interop"
    )
    try:
        if request["op"] == "update":
            presences = {KernelId(uuid.UUID(k)): bool(v) for k, v in request["kernels"].items()}
            await client.update_kernel_presence_batch(presences)
            return {"ok": True}
        ids = [KernelId(uuid.UUID(k)) for k in request["kernels"]]
        statuses = await client.get_kernel_presence_batch(ids)
        agent_last_check = await client.get_agent_last_check(AgentId(request["agent"]))
        return {
            "agent_last_check": agent_last_check,
            "kernels": {
                str(k): None
                if s is None
                else {
                    "presence": None if s.presence is None else str(s.presence),
                    "last_presence": s.last_presence,
                    "last_check": s.last_check,
                    "created_at": s.created_at,
                }
                for k, s in statuses.items()
            },
        }
    finally:
        await client.close()


if __name__ == "__main__":
    reply = asyncio.run(main(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])))
    print(json.dumps(reply))
