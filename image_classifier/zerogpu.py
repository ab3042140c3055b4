"""Hugging Face ZeroGPU: a Space that holds a GPU only while a function decorated with `spaces.GPU` runs.

With the `spaces` package installed and SPACES_ZERO_GPU set (ZeroGPU hardware sets it), the classifier's
steps that run the model are such functions (`decorate`, applied in classifier.py); anywhere else nothing
changes. Those steps take and return CPU tensors, so what crosses into the GPU's process is small, and the
steps never nest (one GPU request per forward pass). Outside them there is no GPU: the classifier then skips
the tuner's timing at start (the reference engine runs) and decodes and preprocesses on the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TypeVar

F = TypeVar("F", bound=Callable)

MODEL_STEPS = ("forward_with_features", "_forward_on_device", "forward_top_k")
"""The `Classifier` methods that run the model: every forward pass goes through exactly one of them."""


def active() -> bool:
    """Whether this process runs on ZeroGPU: SPACES_ZERO_GPU set and the `spaces` package importable."""
    if not os.environ.get("SPACES_ZERO_GPU"):
        return False
    try:
        import spaces  # noqa: F401
    except ImportError:
        return False
    return True


def on_gpu(function: F) -> F:
    """`spaces.GPU(function)` on ZeroGPU, else `function` itself."""
    if not active():
        return function
    import spaces

    return spaces.GPU(function)


def decorate(cls: type, names: Iterable[str] = MODEL_STEPS) -> None:
    """Wrap the methods `names` of `cls` with `on_gpu` (nothing changes off ZeroGPU)."""
    if active():
        for name in names:
            setattr(cls, name, on_gpu(getattr(cls, name)))
