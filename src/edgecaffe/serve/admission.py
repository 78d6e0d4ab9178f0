"""Admission and back-pressure: a bounded number of requests in flight, and waiting for a
call's futures until they are done, its deadline passes or its client goes away.

The bound counts engine requests (one per input) admitted and not yet answered. A call that
would pass it is refused at once (429 with Retry-After), never queued behind the bound; a call
with more inputs than the bound could ever hold is refused for good (413). Waiting is event
driven: the engine's futures, the client's `http.disconnect` message and one timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from typing import Any

from edgecaffe.serve.inputs import CallError

Receive = Callable[[], Awaitable[dict[str, Any]]]


class Admission:
    """Requests in flight, at most `capacity`. Used from the event loop's thread only."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_flight = 0

    def check_room(self) -> None:
        """`CallError(429)` if not even one more request fits now."""
        if self.in_flight >= self.capacity:
            raise CallError(429, f"queue full: {self.in_flight} of {self.capacity} requests "
                            "in flight; retry later", {"Retry-After": "1"})

    def admit(self, count: int) -> None:
        """Take `count` places or raise `CallError` (429 when full now, 413 when never)."""
        if count > self.capacity:
            raise CallError(413, f"{count} inputs in one call; the queue holds at most "
                             f"{self.capacity} (--queue): split the call")
        if self.in_flight + count > self.capacity:
            raise CallError(429, f"queue full: {self.in_flight} of {self.capacity} requests "
                             "in flight; retry later", {"Retry-After": "1"})
        self.in_flight += count

    def release(self, count: int) -> None:
        self.in_flight -= count


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has gone (the ASGI server's `http.disconnect`). Called once the
    body has been read, so no other message can come."""
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    except Exception:  # the server could not tell: count the client as gone
        return


def _all_done(futures: Sequence[Future], loop: asyncio.AbstractEventLoop) -> asyncio.Future:
    """An asyncio future of the loop, set once every one of `futures` is done (however: a
    result, an error, cancelled). One thread-safe wake-up of the loop for the whole call,
    from the thread that ends the last of them (an engine worker), instead of one per future
    and a gather."""
    waiter = loop.create_future()
    left = [len(futures)]
    lock = threading.Lock()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    def one_done(_: Future) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
                loop.call_soon_threadsafe(wake)

    if not futures:
        waiter.set_result(None)
    for future in futures:
        future.add_done_callback(one_done)  # runs at once, here, if already done
    return waiter


async def settle(futures: Sequence[Future], timeout_s: float | None,
                 receive: Receive | None) -> str:
    """Wait for every engine future of a call: "done", or "timeout" / "disconnected" after
    cancelling those not done (the engine fails their networks and returns their memory).
    If the waiting task itself is cancelled (a shutdown past its grace period), the futures
    are cancelled too."""
    loop = asyncio.get_running_loop()
    waiter = _all_done(futures, loop)
    waiters: set[asyncio.Future] = {waiter}
    watch = None
    if receive is not None:
        watch = asyncio.ensure_future(_disconnected(receive))
        waiters.add(watch)
    outcome = "timeout"
    try:
        done, _ = await asyncio.wait(waiters, timeout=timeout_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            outcome = "done"
        elif watch is not None and watch in done:
            outcome = "disconnected"
    finally:
        if watch is not None:
            watch.cancel()
        if outcome != "done":
            for future in futures:
                future.cancel()
            waiter.cancel()
    return outcome
