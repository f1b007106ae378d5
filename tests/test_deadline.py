"""gateway.deadline.Deadline: asyncio.timeout's effect around one await, told apart from a
cancellation that came from elsewhere."""

from __future__ import annotations

import asyncio

import pytest

from gateway.deadline import Deadline


async def test_an_await_past_its_deadline_is_cancelled_and_the_task_is_not_left_cancelling() -> None:
    deadline = Deadline(0.01)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(30)
    assert deadline.expired()
    deadline.stop()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0)  # the task goes on as if nothing happened


async def test_a_cancellation_from_elsewhere_is_not_the_deadline() -> None:
    waiting = asyncio.Event()

    async def attempt() -> str:
        deadline = Deadline(60)
        try:
            waiting.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if deadline.expired():
                return "timed out"
            raise
        finally:
            deadline.stop()
        return "answered"

    task = asyncio.create_task(attempt())
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_stopped_deadline_never_fires() -> None:
    deadline = Deadline(0.01)
    deadline.stop()
    await asyncio.sleep(0.05)  # past it: nothing is cancelled
    assert not deadline.expired()
