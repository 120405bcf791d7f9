"""Celery and RQ queues kept in Redis lists, in quell's words.

Celery (kombu's Redis transport) keeps a queue as a list named after it,
plus one list per priority step for messages sent with a priority: the
queue name, the separator ``\\x06\\x16`` and the step (``celery\\x06\\x163``).
The default steps are 0, 3, 6 and 9; step 0 is the bare name, and with
Redis a *lower* number is served first. Messages delivered to a worker but
not yet acknowledged sit in the ``unacked`` hash, shared by every queue on
the broker.

RQ keeps waiting job ids in the list ``rq:queue:<name>``, jobs being worked
on in the sorted set ``rq:wip:<name>`` (its started-job registry), and the
workers that listen to the queue in the set ``rq:workers:<name>``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Literal

from collectors.model import OK, CollectResult, Labels, error
from collectors.readings import Converter, Reading
from collectors.resp import RedisConnection, RespError

CELERY_SEPARATOR = "\x06\x16"
CELERY_PRIORITY_STEPS = (0, 3, 6, 9)
QueueKind = Literal["celery", "rq"]


def celery_keys(
    queue: str,
    steps: tuple[int, ...] = CELERY_PRIORITY_STEPS,
    separator: str = CELERY_SEPARATOR,
) -> list[tuple[str, str]]:
    """(priority step, list name) for each of a Celery queue's lists."""
    return [(str(step), queue if step == 0 else f"{queue}{separator}{step}") for step in steps]


def _count(reply: Any) -> float:
    if isinstance(reply, RespError):
        raise reply
    if not isinstance(reply, int):
        raise RespError(f"expected a count, got {reply!r}")
    return float(reply)


class RedisQueueCollector:
    def __init__(
        self,
        host: str,
        port: int,
        queue: str,
        kind: QueueKind,
        *,
        db: int = 0,
        password: str | None = None,
        username: str | None = None,
        name: str | None = None,
        timeout_s: float = 2.0,
        priority_steps: tuple[int, ...] = CELERY_PRIORITY_STEPS,
    ) -> None:
        self.kind = kind
        self.queue = queue
        self.name = name or f"redis://{host}:{port}/{db} {kind}:{queue}"
        self.preset = kind
        self._connection = RedisConnection(host, port, db, password, username, timeout_s)
        self._steps = priority_steps
        self._converter = Converter()
        self._base: Labels = (("queue", queue), ("target", self.name))

    def _commands(self) -> list[tuple[str | bytes | int, ...]]:
        if self.kind == "celery":
            commands: list[tuple[str | bytes | int, ...]] = [
                ("LLEN", key) for _, key in celery_keys(self.queue, self._steps)
            ]
            commands.append(("HLEN", "unacked"))
            return commands
        return [
            ("LLEN", f"rq:queue:{self.queue}"),
            ("ZCARD", f"rq:wip:{self.queue}"),
            ("SCARD", f"rq:workers:{self.queue}"),
        ]

    def _readings(self, replies: list[Any]) -> list[Reading]:
        if self.kind == "celery":
            steps = [step for step, _ in celery_keys(self.queue, self._steps)]
            readings = [
                Reading("depth", (("priority", step),), "gauge", _count(reply))
                for step, reply in zip(steps, replies, strict=False)
            ]
            readings.append(Reading("unacked", (), "gauge", _count(replies[len(steps)])))
            return readings
        waiting, started, workers = replies
        return [
            Reading("depth", (), "gauge", _count(waiting)),
            Reading("running", (), "gauge", _count(started)),
            Reading("workers", (), "gauge", _count(workers)),
        ]

    async def collect(self, now: float) -> CollectResult:
        started = time.perf_counter()
        try:
            replies = await self._connection.pipeline(self._commands())
            readings = self._readings(replies)
        except TimeoutError:
            status = error(f"{self.name}: Redis did not answer in time")
        except OSError as problem:
            reason = os.strerror(problem.errno) if problem.errno else str(problem)
            status = error(f"cannot connect to {self.name}: {reason.lower()}")
        except (RespError, ValueError) as problem:
            status = error(f"{self.name}: {problem or type(problem).__name__}")
        else:
            samples = self._converter.convert(readings, now, self._base)
            return CollectResult(samples, [], OK, time.perf_counter() - started)
        return CollectResult([], [], status, time.perf_counter() - started)

    async def close(self) -> None:
        await self._connection.close()
