"""SC-DL-001: the states a session can be stuck in, each with the deadline its handler reads."""

from __future__ import annotations

from sokovan.config import Settings
from sokovan.scheduler.handlers import give_up_in, pull_images, state_deadlines
from sokovan.types import SessionStatus


def test_sc_dl_001_each_state_with_a_deadline_maps_to_its_setting() -> None:
    """The deadlines `session show` and `sokovan.session.get` report are the handlers' own."""
    settings = Settings(terminating_deadline=7, pulling_deadline=8, creating_deadline=9)
    assert state_deadlines(settings) == {
        SessionStatus.PULLING: 8.0,
        SessionStatus.CREATING: 9.0,
        SessionStatus.TERMINATING: 7.0,
    }
    assert give_up_in(SessionStatus.PULLING) is pull_images.DECLARATION.give_up
    for state in (SessionStatus.PENDING, SessionStatus.RUNNING, SessionStatus.TERMINATED):
        assert give_up_in(state) is None
