"""How the forward pass runs: PyTorch (fp32, fp16, channels_last) or OpenVINO, and the conversion cache."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

PRECISIONS = ("fast", "exact")
"""fast: the quickest engine that keeps the answers (`select_engine`); exact: PyTorch fp32."""
MEMORY_PER_WEIGHT = {
    "openvino-fp32": 3.0,
    "torch-fp32-channels-last": 1.5,
    "torch-fp32": 1.5,
    "torch-fp16-channels-last": 1.0,
}
"""Resident memory a loaded model takes per byte of its fp32 weights, on each engine. OpenVINO holds three
copies: the PyTorch module, the converted graph (kept to compile other batch sizes) and the compiled model;
PyTorch one, plus the buffers of its forward pass."""
MEMORY_PER_MODEL_MB = 20
"""And per model, whatever its size: compiled kernels, buffers. With the above, within 20 % of the resident
memory that bench/models.py measured for each of the eight default models on OpenVINO."""

logger = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None` picks CUDA when available, else the CPU; a named device must exist."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"Unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'.") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested, but no CUDA GPU is available here: use --device cpu.")
    return device


def select_engine(device: torch.device, precision: str = "fast", openvino: bool | None = None) -> str:
    """How the forward pass runs.

    exact: PyTorch fp32, the reference. fast: on CUDA, fp16 with channels_last; on CPU, OpenVINO in fp32
    when it is installed (1.85x PyTorch's forward pass here, same answers), else PyTorch channels_last.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "exact":
        return "torch-fp32"
    if device.type == "cuda":
        return "torch-fp16-channels-last"
    if openvino is None:
        openvino = importlib.util.find_spec("openvino") is not None
    return "openvino-fp32" if openvino and device.type == "cpu" else "torch-fp32-channels-last"


def cache_dir() -> Path:
    """Where converted models are kept: $IMAGE_CLASSIFIER_CACHE, else ~/.cache/image-classifier."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "image-classifier"
    return Path(os.environ.get("IMAGE_CLASSIFIER_CACHE", default))


Runner = Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]
"""`run(batch, threads=None)`: the model's outputs for `batch`. `threads` caps the threads of that pass
(OpenVINO compiles a model for it, once); PyTorch's engines use their global pool and ignore it."""


def openvino_runner(model: torch.nn.Module, example: torch.Tensor) -> Runner:
    """Convert `model` to OpenVINO once (cached on disk, keyed by its weights) and compile it for the CPU."""
    import openvino as ov

    key = hashlib.sha256(f"{type(model).__qualname__}|{tuple(example.shape)}|{ov.__version__}".encode())
    for name, tensor in model.state_dict().items():
        key.update(name.encode())
        key.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    path = cache_dir() / "openvino" / f"{key.hexdigest()[:32]}.xml"
    fresh = not path.exists()
    if fresh:
        path.parent.mkdir(parents=True, exist_ok=True)
        converted = convert_to_openvino(model, example)
        with tempfile.TemporaryDirectory(dir=path.parent) as folder:  # complete files or none
            ov.save_model(converted, Path(folder) / "model.xml", compress_to_fp16=False)
            os.replace(Path(folder) / "model.bin", path.with_suffix(".bin"))
            os.replace(Path(folder) / "model.xml", path)
    core = ov.Core()
    graph = core.read_model(str(path))
    compiled: dict[tuple[int, int | None], ov.CompiledModel] = {}
    lock = threading.Lock()

    def compiled_for(batch_size: int, threads: int | None = None) -> ov.CompiledModel:
        """A static-shape model per batch size (about 15 % faster than one with a dynamic batch) and per
        cap on threads (None: all cores)."""
        with lock:
            if (batch_size, threads) not in compiled:
                static = graph.clone()
                static.reshape([batch_size, *example.shape[1:]])
                # fp32 explicitly: on CPUs with bf16 OpenVINO would pick it (slower here, less exact).
                config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
                if threads is not None:
                    config["INFERENCE_NUM_THREADS"] = threads
                compiled[batch_size, threads] = core.compile_model(static, "CPU", config)
            return compiled[batch_size, threads]

    compiled_for(1)

    def run(batch: torch.Tensor, threads: int | None = None) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The model's outputs for `batch`: one tensor, or a tuple where the model returns several."""
        request = compiled_for(batch.shape[0], threads).create_infer_request()  # one per call: thread-safe
        results = request.infer([batch.numpy()])
        outputs = tuple(torch.from_numpy(results[i].copy()) for i in range(len(results)))
        return outputs if len(outputs) > 1 else outputs[0]

    if fresh:  # a new conversion is used, and kept, only if it answers as PyTorch does
        try:
            check_against_pytorch(model, run, example)
        except Exception:
            path.unlink(missing_ok=True)
            path.with_suffix(".bin").unlink(missing_ok=True)
            raise
    return run


def convert_to_openvino(model: torch.nn.Module, example: torch.Tensor):
    """OpenVINO's graph of `model`, traced on `example`, with a dynamic batch size.

    Traced without autograd, as the engine runs it: with autograd on, torchvision's attention takes another
    path on the tracer's check run, which fails ("Graphs differed across invocations"), and every ViT fell
    back to PyTorch. `check_against_pytorch` then compares the conversion's answers with PyTorch's.
    """
    import openvino as ov

    root = logging.getLogger()
    level = root.level
    try:
        with warnings.catch_warnings(), torch.no_grad():  # the tracer's warnings are noise here
            warnings.simplefilter("ignore")
            return ov.convert_model(
                model, example_input=example, input=[ov.PartialShape([-1, *example.shape[1:]])]
            )
    finally:
        root.setLevel(level)  # a failed conversion leaves the root logger at ERROR, hiding every warning


def check_against_pytorch(
    model: torch.nn.Module, run: Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]], example
) -> None:
    """Raise if `run` (a converted `model`) answers a random input differently from `model` in PyTorch."""
    probe = torch.randn(example.shape, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(probe)
    got = run(probe)
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = got if isinstance(got, tuple) else (got,)
    for want, have in zip(expected, got, strict=True):
        tolerance = 1e-3 * max(1.0, want.abs().max().item())
        if have.shape != want.shape or (have - want.float()).abs().max().item() > tolerance:
            raise RuntimeError("the converted model's answers differ from PyTorch's")


def prepare_engine(model: torch.nn.Module, engine: str, example: torch.Tensor) -> tuple[str, Runner]:
    """Set `model` up for `engine`: the engine actually used and its `Runner` (batch -> logits).

    `example` is one preprocessed input batch (shape and dtype). OpenVINO falls back to PyTorch if it
    can't take the model.
    """
    if engine == "openvino-fp32":
        try:
            return engine, openvino_runner(model, example)
        except Exception as e:  # a missing plugin, an unsupported layer: PyTorch always works
            logger.warning("OpenVINO could not take the model (%s); using PyTorch instead.", e)
            engine = "torch-fp32-channels-last"
    if engine == "torch-fp16-channels-last":
        half = model.half().to(memory_format=torch.channels_last)
        return engine, lambda batch, threads=None: half(
            batch.half().contiguous(memory_format=torch.channels_last)
        )
    if engine == "torch-fp32-channels-last":
        model = model.to(memory_format=torch.channels_last)
        return engine, lambda batch, threads=None: model(batch.contiguous(memory_format=torch.channels_last))
    return engine, lambda batch, threads=None: model(batch)
