"""The scheduler on its own, in-process: batching, the KV budget, the bound, faults."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import pytest

from inference.engine.cost_model import CostModel
from inference.engine.faults import Faults
from inference.engine.scheduler import InjectedFailure, Observer, QueueFull, Scheduler, Sequence

STEP_MS = 2.0


class Recorder(Observer):
    def __init__(self) -> None:
        self.max_running = 0
        self.finished: list[Sequence] = []
        self.steps = 0

    def on_step(self, running: int, prefill_tokens: int, generated_tokens: int) -> None:
        self.steps += 1
        self.max_running = max(self.max_running, running)

    def on_finish(self, seq: Sequence) -> None:
        self.finished.append(seq)


@pytest.fixture
async def make() -> AsyncIterator[object]:
    tasks: list[asyncio.Task[None]] = []

    def build(slots: int = 4, kv_tokens: int = 10_000, max_waiting: int = 100, **faults: object):
        recorder = Recorder()
        scheduler = Scheduler(
            CostModel(prefill_ms_per_token=0.0, decode_step_ms=STEP_MS, decode_ms_per_seq=0.0),
            slots, kv_tokens, max_waiting, Faults(**faults), recorder,  # type: ignore[arg-type]
        )  # fmt: skip
        tasks.append(asyncio.create_task(scheduler.run()))
        return scheduler, recorder

    yield build
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def request(scheduler: Scheduler, prompt: int = 10, output: int = 5) -> Sequence:
    seq = Sequence(scheduler.next_id(), prompt, output, scheduler.now())
    seq.done = asyncio.get_running_loop().create_future()
    return seq


async def test_running_never_exceeds_the_slots_and_every_request_finishes(make) -> None:
    scheduler, recorder = make(slots=3)
    seqs = [request(scheduler) for _ in range(10)]
    for seq in seqs:
        scheduler.submit(seq)
    await asyncio.wait_for(asyncio.gather(*(s.done for s in seqs)), 5)
    assert recorder.max_running == 3
    assert all(s.generated == 5 and s.finish_reason == "length" for s in seqs)
    assert scheduler.completed == 10


async def test_admission_is_first_come_first_served(make) -> None:
    scheduler, recorder = make(slots=1)
    seqs = [request(scheduler, output=2) for _ in range(5)]
    for seq in seqs:
        scheduler.submit(seq)
    await asyncio.wait_for(asyncio.gather(*(s.done for s in seqs)), 5)
    assert [s.request_id for s in recorder.finished] == [s.request_id for s in seqs]


async def test_kv_budget_limits_the_batch_below_the_slot_count(make) -> None:
    # Each request reserves 10 + 5 tokens; 40 tokens hold two at a time.
    scheduler, recorder = make(slots=8, kv_tokens=40)
    seqs = [request(scheduler) for _ in range(6)]
    for seq in seqs:
        scheduler.submit(seq)
    await asyncio.wait_for(asyncio.gather(*(s.done for s in seqs)), 5)
    assert recorder.max_running == 2
    assert scheduler.kv_reserved == 0 and scheduler.kv_in_use == 0


async def test_queue_bound_counts_only_what_free_slots_cannot_take(make) -> None:
    scheduler, _ = make(slots=2, max_waiting=3, stalled=True)
    scheduler.set_stalled(True)
    for _ in range(5):  # 2 will take the free slots, 3 may wait
        scheduler.submit(request(scheduler))
    with pytest.raises(QueueFull):
        scheduler.submit(request(scheduler))


async def test_stall_stops_progress_until_cleared(make) -> None:
    scheduler, _ = make(slots=2)
    scheduler.set_stalled(True)
    seq = request(scheduler)
    scheduler.submit(seq)
    await asyncio.sleep(0.1)
    assert seq.generated == 0 and not seq.done.done()
    scheduler.set_stalled(False)
    await asyncio.wait_for(seq.done, 2)
    assert seq.generated == 5


async def test_error_rate_one_fails_every_request(make) -> None:
    scheduler, _ = make(error_rate=1.0)
    with pytest.raises(InjectedFailure):
        scheduler.submit(request(scheduler))


async def test_dependency_holds_the_slot_without_generating(make) -> None:
    scheduler, recorder = make(slots=1, dependency_ms=150.0)
    first, second = request(scheduler, output=1), request(scheduler, output=1)
    scheduler.submit(first)
    scheduler.submit(second)
    await asyncio.sleep(0.05)
    assert scheduler.running_count == 1 and first.generated == 0 and recorder.steps == 0
    await asyncio.wait_for(asyncio.gather(first.done, second.done), 3)
    # The second waited for the first's dependency call, then made its own.
    assert second.admitted_at - second.arrival >= 0.14
    assert second.finished_at - second.arrival >= 0.29


async def test_abort_frees_the_slot_for_the_next_request(make) -> None:
    scheduler, _ = make(slots=1)
    hog, next_in_line = request(scheduler, output=10_000), request(scheduler, output=1)
    scheduler.submit(hog)
    scheduler.submit(next_in_line)
    await asyncio.sleep(0.02)
    scheduler.abort(hog)
    await asyncio.wait_for(next_in_line.done, 2)
    assert hog.finish_reason == "abort"
    assert scheduler.completed == 1


async def test_fewer_slots_take_effect_without_preempting(make) -> None:
    scheduler, _ = make(slots=4)
    long_ones = [request(scheduler, output=40) for _ in range(4)]
    for seq in long_ones:
        scheduler.submit(seq)
    await asyncio.sleep(0.02)
    scheduler.set_slots(1)
    late = [request(scheduler, output=2) for _ in range(3)]
    for seq in late:
        scheduler.submit(seq)
    await asyncio.wait_for(asyncio.gather(*(s.done for s in long_ones + late)), 5)
    assert all(s.generated == 40 for s in long_ones)
    # The late ones ran one at a time: each was admitted after the previous finished.
    for before, after in itertools.pairwise(late):
        assert after.admitted_at >= before.finished_at


async def test_steps_follow_the_cost_model_not_faster() -> None:
    # 4 slots, 10 tokens each, 10 ms per step: 12 requests need 3 batches of
    # 10 steps = 0.3 s. Pacing by deadline must never beat the model; the
    # upper bound only guards against gross slowness on a loaded machine.
    scheduler = Scheduler(CostModel(0.0, 10.0, 0.0), 4, 10_000, 100)
    task = asyncio.create_task(scheduler.run())
    try:
        start = scheduler.now()
        seqs = [request(scheduler, output=10) for _ in range(12)]
        for seq in seqs:
            scheduler.submit(seq)
        await asyncio.wait_for(asyncio.gather(*(s.done for s in seqs)), 5)
        elapsed = scheduler.now() - start
    finally:
        task.cancel()
    assert 0.29 <= elapsed < 0.6


async def test_aborting_every_running_sequence_at_once_admits_the_waiting(make) -> None:
    # All slots freed in one iteration must go to the queue, not leave the
    # scheduler idle with requests waiting.
    scheduler, _ = make(slots=2)
    running = [request(scheduler, output=4_000) for _ in range(2)]
    waiting = [request(scheduler, output=2) for _ in range(2)]
    for seq in running + waiting:
        scheduler.submit(seq)
    await asyncio.sleep(0.02)
    assert scheduler.running_count == 2 and scheduler.waiting_count == 2
    for seq in running:
        scheduler.abort(seq)
    await asyncio.wait_for(asyncio.gather(*(s.done for s in waiting)), 2)
    assert all(s.finish_reason == "length" for s in waiting)
