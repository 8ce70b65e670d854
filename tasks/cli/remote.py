"""Sending public tasks from the CLI: the broker is checked once and answers have a bound.

Every task a command sends goes through the command's one Celery app (see `root`), over one
producer and its one broker connection, however many tasks there are.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sokovan import constants as C
from tasks.cli.errors import EXIT_UNREACHABLE, CliError, Unreachable, classify
from tasks.cli.root import BROKER_CHECK_SEC, CommandRoot, broker_reachable

T = TypeVar("T")


def per_task(sessions: int) -> int:
    """How many sessions each message of a burst carries: one alone goes as the single task."""
    return 1 if sessions == 1 else C.SESSION_BATCH_MAX


class CutShort(CliError):
    """A burst of sends that stopped partway: the first `sent` tasks went out."""

    def __init__(self, message: str, code: int, sent: int) -> None:
        super().__init__(message, code)
        self.sent = sent


class Remote:
    """Sends tasks by name and waits for their answer until one shared deadline."""

    def __init__(self, root: CommandRoot, wait: float) -> None:
        self.root = root
        self.settings = root.settings
        self.wait = wait
        self.deadline = time.monotonic() + wait
        self._broker_seen = False

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def send(self, name: str, kwargs: dict[str, Any]) -> Any:
        """Sends one task; raises Unreachable when the broker does not answer."""
        return self.send_all(name, [kwargs])[0]

    def send_all(
        self, name: str, calls: Sequence[dict[str, Any]], sessions: int | None = None
    ) -> list[Any]:
        """Sends one task per call, in order, over one producer; their AsyncResults.

        A send that fails ends the burst with one error that says how many were sent (and,
        given the `sessions` the calls carry in batches of SESSION_BATCH_MAX, how many of them).
        """
        self._check_broker()
        app = self.root.app
        results: list[Any] = []
        try:
            with app.producer_or_acquire() as producer:
                for kwargs in calls:
                    results.append(
                        app.send_task(name, kwargs=kwargs, retry=False, producer=producer)
                    )
        except Exception as e:
            # Each AsyncResult unsubscribes when collected, and against a lost broker that
            # retries for about 20 s and prints tracebacks: these answers are not awaited.
            for result in results:
                result.backend = None
            raise self._cut_short(e, len(results), len(calls), sessions) from e
        return results

    def send_sessions(
        self,
        items: Sequence[T],
        one: tuple[str, Callable[[T], dict[str, Any]]],
        many: tuple[str, Callable[[Sequence[T]], dict[str, Any]]],
    ) -> Burst:
        """One session's item goes as the single task `one`; more go as the batch task `many`,
        a message per SESSION_BATCH_MAX items, in order (the kwargs made by each's function)."""
        if len(items) == 1:
            name, kwargs_of = one
            return Burst(self.send_all(name, [kwargs_of(items[0])]), 1)
        name, batch_of = many
        step = C.SESSION_BATCH_MAX
        calls = [batch_of(items[i : i + step]) for i in range(0, len(items), step)]
        return Burst(self.send_all(name, calls, len(items)), len(items))

    def _check_broker(self) -> None:
        """PINGs the broker before the first send only: one short check per command."""
        if self._broker_seen:
            return
        check = min(BROKER_CHECK_SEC, self.wait) if self.wait else BROKER_CHECK_SEC
        if not broker_reachable(self.settings, check):
            raise Unreachable(
                f"the broker at {self.settings.redis_url} does not answer "
                "(SOKOVAN_REDIS_URL; is `sokovan up` running? see `sokovan status`)"
            )
        self._broker_seen = True

    def _cut_short(
        self, error: BaseException, sent: int, total: int, sessions: int | None = None
    ) -> CutShort:
        """The one-line error of a burst that stopped after `sent` of `total` tasks."""
        code, line = classify(error)
        why = line.split(": ", 1)[-1]
        first = f" (the first {sent} in the order given)" if sent else ""
        if sent and sessions is not None:
            carried = min(sent * C.SESSION_BATCH_MAX, sessions)
            first = f" (the first {carried} of {sessions} sessions in the order given)"
        if code == EXIT_UNREACHABLE:
            message = (
                f"unreachable: the broker at {self.settings.redis_url} stopped answering after "
                f"{sent} of {total} task(s) were sent{first}: {why}"
            )
        else:
            message = f"failed: {sent} of {total} task(s) sent{first}, then: {why}"
        return CutShort(message, code, sent)

    def answer(self, result: Any) -> dict[str, Any]:
        """The task's JSON answer; raises Unreachable when no worker answers in time."""
        from celery.exceptions import TimeoutError as CeleryTimeout

        try:
            value = result.get(timeout=max(self.remaining(), 0.1))
        except CeleryTimeout as e:
            raise Unreachable(
                f"no answer from a worker within {self.wait:g}s "
                "(is a worker running? see `sokovan status`)"
            ) from e
        if not isinstance(value, dict):
            return {"value": value}
        return value


@dataclass
class Burst:
    """The messages that carry `sessions` sessions, in the order given (see send_sessions)."""

    results: list[Any]
    sessions: int

    def task_id(self, n: int) -> str:
        """The id of the task that carries the n-th session."""
        return str(self.results[n // per_task(self.sessions)].id)

    def answers(self, remote: Remote, run_key: str | None = None) -> list[dict[str, Any]]:
        """One document per session, in the order sent (see per_session)."""
        answers = [remote.answer(r) for r in self.results]
        if self.sessions == 1:
            return answers
        return per_session(answers, self.sessions, run_key)


def per_session(
    answers: list[dict[str, Any]], count: int, run_key: str | None = None
) -> list[dict[str, Any]]:
    """The batch tasks' answers as one document per session, in the order they were sent.

    `run_key`: the answer's run id each session's document takes (the pull run of a creation).
    """
    docs: list[dict[str, Any]] = []
    for n, answer in enumerate(answers):
        size = min(C.SESSION_BATCH_MAX, count - n * C.SESSION_BATCH_MAX)
        if answer.get("error"):  # the whole message refused: each of its sessions with it
            docs.extend(dict(answer) for _ in range(size))
            continue
        refused = {int(r["index"]): r for r in answer.get("refused", [])}
        answered = iter(answer.get("sessions", []))
        for index in range(size):
            if index in refused:
                docs.append({k: v for k, v in refused[index].items() if k != "index"})
            elif run_key is None:
                docs.append(next(answered))
            else:
                docs.append({**next(answered), run_key: answer.get(run_key)})
    return docs
