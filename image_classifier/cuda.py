"""What the engines do on CUDA only: CUDA graphs of the model, and finiteness checked on the device.

DenseNet-121 at batch 1 is some 600 small kernels whose launches, not the GPU, set the time; a captured graph
launches them all at once (on an H200: 8.9 ms eager, 1.7 ms replayed, issue 19). A graph is captured per
input shape on first use, at most MAX_GRAPHS of them; other shapes run eagerly.
"""

from __future__ import annotations

import threading

import torch

MAX_GRAPHS = 8
"""Input shapes a runner captures a graph for (the page's batch 1, the runner's padded batch sizes: powers of
two up to its batch); any further shape runs eagerly rather than hold another graph's memory."""
WARMUP_RUNS = 2
"""Eager runs on a side stream before a capture (cuDNN picks its algorithms then, outside the graph)."""


class CudaGraphRunner:
    """A runner (`batch -> outputs`) replayed from CUDA graphs, one per input shape and dtype.

    Thread-safe: a lock covers the copy into the graph's input, the replay and the copy of its outputs (the
    next replay overwrites them), so callers on several threads never see each other's answers. On a tensor
    that is not on CUDA it runs eagerly."""

    def __init__(self, run, max_graphs: int = MAX_GRAPHS) -> None:
        self.run, self.max_graphs = run, max_graphs
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, object]] = {}
        self._lock = threading.Lock()

    def __call__(self, batch: torch.Tensor, threads: int | None = None):
        if batch.device.type != "cuda":
            return self.run(batch)
        key = (tuple(batch.shape), batch.dtype, batch.device)
        with self._lock:
            entry = self._graphs.get(key)
            if entry is None:
                if len(self._graphs) >= self.max_graphs:
                    return self.run(batch)
                entry = self._graphs[key] = self._capture(batch)
            graph, static_input, static_output = entry
            static_input.copy_(batch)
            graph.replay()
            return _clone(static_output)

    def _capture(self, batch: torch.Tensor):
        static_input = batch.clone()
        side = torch.cuda.Stream(batch.device)
        side.wait_stream(torch.cuda.current_stream(batch.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self.run(static_input)
        torch.cuda.current_stream(batch.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            static_output = self.run(static_input)
        return graph, static_input, static_output


def _clone(outputs):
    if isinstance(outputs, tuple):
        return tuple(output.clone() for output in outputs)
    return outputs.clone()


def finite_rows(*outputs: torch.Tensor | None) -> torch.Tensor:
    """Whether each row (image) of every output is finite throughout, computed where the outputs are."""
    finite = None
    for output in outputs:
        if output is not None:
            rows = torch.isfinite(output.reshape(len(output), -1)).all(dim=1)
            finite = rows if finite is None else finite & rows
    return finite


def configure(device: torch.device) -> None:
    """cuDNN's autotuner: the model runs at a handful of fixed shapes, so picking the fastest convolution
    algorithm per shape once pays (DenseNet-121 batch 128 on an H200: see BENCHMARKS.md, section 5)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
