"""CUDA graphs: a step captured once and replayed with one launch from the host.

The per-token decode step is ~100 small kernels whose launch overhead, not their
work, sets the latency at batch 1. ``capture(fn, be)`` records ``fn`` (which must
read no host value that changes between replays: ``GPT.decode_step`` keeps its
position on the device) into a CUDA graph on a stream of its own; ``launch()``
replays it there. What ``fn`` allocates comes from a memory pool private to the
graph and kept with it, so no other allocation can take memory the graph still
writes to on a later replay (the arrays ``fn`` frees during capture go back to
that pool only).

Set ``GPTLITE_CUDA_GRAPHS=0`` to run every step eagerly instead.
"""
from __future__ import annotations

import os


def enabled() -> bool:
    return os.environ.get("GPTLITE_CUDA_GRAPHS", "1") != "0"


class Graph:
    """A captured step: ``launch()`` replays it on ``stream``; results stay on the
    device, in the arrays ``fn`` wrote to (read them on ``stream``)."""

    def __init__(self, graph, stream, pool):
        self.graph, self.stream, self.pool = graph, stream, pool

    def launch(self) -> None:
        self.graph.launch(stream=self.stream)


def stream_for(be):
    """The non-blocking stream a graph is captured and replayed on."""
    return be.xp.cuda.Stream(non_blocking=True)


def capture(fn, be, stream) -> Graph:
    """Record ``fn()`` into a CUDA graph on ``stream`` (nothing runs until
    ``launch``). Work issued before on other streams must be ordered before the
    first launch by the caller (``stream.wait_event``)."""
    cp = be.xp
    pool = cp.cuda.MemoryPool()
    with cp.cuda.using_allocator(pool.malloc), stream:
        stream.begin_capture()
        try:
            fn()
        finally:
            graph = stream.end_capture()
    return Graph(graph, stream, pool)


def run_eagerly(fn, stream) -> None:
    """``fn()`` on ``stream``, now: the step before a capture, which also compiles
    and loads every kernel the capture will record."""
    with stream:
        fn()
