"""The worker's batches in flight: the model call overlapped with Python work.

A batch goes claim + read + normalise (Python, holding the GIL) -> model call
(TensorFlow: its own threads, the GIL released) -> one transaction.  Run one
after the other, the model waits while Python prepares and writes each batch
(``serve`` used about 1.3 of 2 cores in a burst).  Here the model call and the
write each run on a thread of their own, so while batch n is in the model,
batch n+1 is claimed and prepared (on the caller's thread) and batch n-1 is
written.

Bounded: at most :data:`DEPTH` batches are claimed and not yet written at any
time (one per stage): the caller waits in :meth:`Pipeline.wait_for_room`
before it claims, and the hand-offs hold one batch each.  Claims taken ahead
are therefore few, and a sibling worker process finds the rest unclaimed.

Order and failures: batches are inferred and written in the order they were
handed in.  A stage that raises has the batch logged and dropped (its ECGs
stay claimed until their lease brings them back, as when the serial loop
raised); the stage itself goes on.  :meth:`Pipeline.close` lets every batch
handed in go through to its write, then ends both threads: nothing claimed is
left half-way, and no thread outlives it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("gateway.process")

#: Batches claimed and not yet written, at most: one being prepared, one in
#: the model, one being written.
DEPTH = 3

B = TypeVar("B")

#: One batch passed between two stages (None: no more batches).
_Handoff = queue.Queue[B | None]


class Pipeline(Generic[B]):
    """``infer`` then ``finish`` for each batch handed in, each on its own thread."""

    def __init__(self, infer: Callable[[B], object], finish: Callable[[B], object], name: str = "worker") -> None:
        self._room = threading.BoundedSemaphore(DEPTH)
        self._reserved = False  # the caller holds a slot for its next batch
        self._to_model: _Handoff[B] = queue.Queue(maxsize=1)
        self._to_finish: _Handoff[B] = queue.Queue(maxsize=1)
        stages = [("model", infer, self._to_model, self._to_finish), ("write", finish, self._to_finish, None)]
        self._threads = [
            threading.Thread(target=self._stage, args=(work, inbox, outbox), name=f"{name}-{stage}", daemon=True)
            for stage, work, inbox, outbox in stages
        ]
        for t in self._threads:
            t.start()

    def wait_for_room(self) -> None:
        """Return once a batch may be claimed (fewer than :data:`DEPTH` in
        flight); the slot is kept until :meth:`submit`, so calling this again
        without submitting does not wait again."""
        if not self._reserved:
            self._room.acquire()
            self._reserved = True

    def submit(self, batch: B) -> None:
        """Hand a claimed, prepared batch to the model stage (after :meth:`wait_for_room`)."""
        if not self._reserved:
            raise RuntimeError("submit() without wait_for_room()")
        self._reserved = False
        self._to_model.put(batch)

    def close(self) -> None:
        """Infer and write every batch handed in, then end the threads (from the caller's thread)."""
        if self._reserved:
            self._reserved = False
            self._room.release()
        self._to_model.put(None)
        for t in self._threads:
            t.join()

    def _stage(self, work: Callable[[B], object], inbox: _Handoff[B], outbox: _Handoff[B] | None) -> None:
        """Run ``work`` on each batch from ``inbox`` and pass it on, until the end mark (None)."""
        while (batch := inbox.get()) is not None:
            try:
                work(batch)
            except Exception:  # database down, etc.: the stage goes on
                log.exception("worker error in a batch; its unwritten ECGs stay claimed until their lease")
                self._room.release()
                continue
            if outbox is not None:
                outbox.put(batch)
            else:
                self._room.release()
        if outbox is not None:
            outbox.put(None)
