"""gateway.disconnect: an answer awaited until the HTTP client hangs up, then cancelled."""

from __future__ import annotations

import asyncio

import pytest

from gateway.disconnect import unless_disconnected


def receiver(hang_up: asyncio.Event):
    async def receive():
        await hang_up.wait()
        return {"type": "http.disconnect"}
    return receive


def test_the_answer_comes_back_while_the_client_stays():
    async def run():
        async def answer():
            await asyncio.sleep(0.01)
            return "scores"
        return await unless_disconnected(receiver(asyncio.Event()), answer())

    assert asyncio.run(run()) == "scores"


def test_a_hang_up_cancels_the_answer_and_gives_none():
    events = []

    async def run():
        hang_up = asyncio.Event()

        async def answer():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                events.append("answer cancelled")  # where the broker client sends CANCEL
                raise

        asyncio.get_running_loop().call_later(0.01, hang_up.set)
        result = await unless_disconnected(receiver(hang_up), answer())
        await asyncio.sleep(0)  # still running normally: the cancellation was absorbed
        return result

    assert asyncio.run(run()) is None
    assert events == ["answer cancelled"]


def test_a_cancellation_from_elsewhere_still_cancels():
    async def run():
        task = asyncio.ensure_future(unless_disconnected(receiver(asyncio.Event()), asyncio.sleep(10)))
        await asyncio.sleep(0.01)
        task.cancel()  # the server shutting down, say
        await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(run())
