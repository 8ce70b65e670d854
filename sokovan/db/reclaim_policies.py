"""Reclaim policies an operator set per scaling group, kept in SQL so they survive restarts."""

from __future__ import annotations

import sqlalchemy as sa

from sokovan.db.base import SqlBase
from sokovan.db.schema import reclaim_policies
from sokovan.types import utcnow


class ReclaimPolicyRows(SqlBase):
    """Policies set with `sokovan reclaim set`; each replaces its group's setting entry."""

    def stored_reclaim_policies(self) -> dict[str, str]:
        """Scaling group -> its policy's JSON object, for every group set."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(reclaim_policies.c.scaling_group, reclaim_policies.c.policy)
            )
            return {str(group): str(policy) for group, policy in rows}

    def store_reclaim_policy(self, scaling_group: str, policy: str) -> None:
        """Sets the group's policy (a JSON object), replacing any set before."""
        now = utcnow()
        stmt = self._insert()(reclaim_policies).values(
            scaling_group=scaling_group, policy=policy, changed_at=now
        )
        stmt = stmt.on_conflict_do_update(
            index_elements=["scaling_group"], set_={"policy": policy, "changed_at": now}
        )
        with self.engine.begin() as conn:
            conn.execute(stmt)

    def drop_reclaim_policy(self, scaling_group: str) -> bool:
        """Forgets the group's policy; False when none was set."""
        stmt = sa.delete(reclaim_policies).where(reclaim_policies.c.scaling_group == scaling_group)
        with self.engine.begin() as conn:
            return bool(conn.execute(stmt).rowcount)
