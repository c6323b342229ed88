"""The Engine.IO socket's queue (server/transport/eio.py PacketQueue): asyncio's queue with its
state in lists, since an empty deque holds a 64-slot block and a queue had four per socket."""

from __future__ import annotations

import asyncio
import contextlib
import tracemalloc

from gamegw.server.transport.eio import PacketQueue


async def test_it_behaves_as_asyncio_queue() -> None:
    queue = PacketQueue()
    assert queue.empty()
    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("a")
    await queue.put("b")
    assert await waiting == "a"
    assert (queue.get_nowait(), queue.empty()) == ("b", True)
    try:
        queue.get_nowait()
        raise AssertionError("an empty queue gave an item")
    except asyncio.QueueEmpty:
        pass


async def test_a_cancelled_get_leaves_the_item_for_the_next() -> None:
    queue = PacketQueue()
    first = asyncio.ensure_future(queue.get())
    second = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("x")
    first.cancel()  # woken, but cancelled before it ran: the item goes to the other getter
    with contextlib.suppress(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 1) == "x"


async def test_join_waits_for_every_task_done() -> None:
    queue = PacketQueue()
    queue.put_nowait(1)
    queue.put_nowait(2)
    joined = asyncio.ensure_future(queue.join())
    queue.get_nowait()
    queue.task_done()
    await asyncio.sleep(0)
    assert not joined.done()
    queue.get_nowait()
    queue.task_done()
    await asyncio.wait_for(joined, 1)


def allocated(make: type) -> int:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [make() for _ in range(500)]
        size = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(kept) == 500
    return size


async def test_it_costs_under_a_third_of_asyncio_queue() -> None:
    lean, stock = allocated(PacketQueue), allocated(asyncio.Queue)
    assert lean * 3 < stock, (lean, stock)
