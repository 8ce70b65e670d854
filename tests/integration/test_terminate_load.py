"""The terminate plan's lean load of TERMINATING sessions."""

from __future__ import annotations

from sokovan.types import SessionStatus as S
from tests.rig import Rig, add_session


async def test_sessions_to_destroy_carry_what_sessions_in_does_for_a_destroy(rig: Rig) -> None:
    """The terminate plan's lean load: same sessions, kernels, order and every field the
    destroy plan and the deadlines read (reason, status change, notes, slots, agent)."""
    first, _ = add_session(rig, ["a1", "a2"], slots={"cpu": "2", "mem": "1073741824"})
    second, _ = add_session(rig, [None])
    rig.repo.merge_session_status_data(first, {"deadline_at": "2030-01-01T00:00:00+00:00"})
    full = rig.repo.sessions_in([S.TERMINATING])
    lean = rig.repo.sessions_to_destroy([S.TERMINATING])
    assert [s.id for s in lean] == [s.id for s in full] == [first, second]
    for a, b in zip(lean, full, strict=True):
        assert (a.status, a.status_info, a.status_changed_at, a.status_data) == (
            b.status,
            b.status_info,
            b.status_changed_at,
            b.status_data,
        )
        assert [
            (k.id, k.agent_id, k.status, k.occupied_slots, k.status_data) for k in a.kernels
        ] == [(k.id, k.agent_id, k.status, k.occupied_slots, k.status_data) for k in b.kernels]
    assert rig.repo.sessions_to_destroy([S.TERMINATING], only=[second])[0].id == second
    assert len(rig.repo.sessions_to_destroy([S.TERMINATING], limit=1)) == 1
