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


def openvino_runner(model: torch.nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Convert `model` to OpenVINO once (cached on disk, keyed by its weights) and compile it for the CPU."""
    import openvino as ov

    key = hashlib.sha256(f"{type(model).__qualname__}|{tuple(example.shape)}|{ov.__version__}".encode())
    for name, tensor in model.state_dict().items():
        key.update(name.encode())
        key.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    path = cache_dir() / "openvino" / f"{key.hexdigest()[:32]}.xml"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Conversion traces the model; its tracer warnings are noise here. Without autograd, as the engine
        # runs it: with autograd on, torchvision's attention takes another path on the tracer's check run,
        # which fails ("Graphs differed across invocations"), and every ViT fell back to PyTorch.
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            converted = ov.convert_model(
                model, example_input=example, input=[ov.PartialShape([-1, *example.shape[1:]])]
            )
        with tempfile.TemporaryDirectory(dir=path.parent) as folder:  # complete files or none
            ov.save_model(converted, Path(folder) / "model.xml", compress_to_fp16=False)
            os.replace(Path(folder) / "model.bin", path.with_suffix(".bin"))
            os.replace(Path(folder) / "model.xml", path)
    core = ov.Core()
    graph = core.read_model(str(path))
    compiled: dict[int, ov.CompiledModel] = {}
    lock = threading.Lock()

    def compiled_for(batch_size: int) -> ov.CompiledModel:
        """A static-shape model per batch size: about 15 % faster than one with a dynamic batch."""
        with lock:
            if batch_size not in compiled:
                static = graph.clone()
                static.reshape([batch_size, *example.shape[1:]])
                # fp32 explicitly: on CPUs with bf16 OpenVINO would pick it (slower here, less exact).
                compiled[batch_size] = core.compile_model(
                    static, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
                )
            return compiled[batch_size]

    compiled_for(1)

    def run(batch: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The model's outputs for `batch`: one tensor, or a tuple where the model returns several."""
        request = compiled_for(batch.shape[0]).create_infer_request()  # a request per call: thread-safe
        results = request.infer([batch.numpy()])
        outputs = tuple(torch.from_numpy(results[i].copy()) for i in range(len(results)))
        return outputs if len(outputs) > 1 else outputs[0]

    return run


def prepare_engine(
    model: torch.nn.Module, engine: str, example: torch.Tensor
) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Set `model` up for `engine`: the engine actually used and a batch -> logits function.

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
        return engine, lambda batch: half(batch.half().contiguous(memory_format=torch.channels_last))
    if engine == "torch-fp32-channels-last":
        model = model.to(memory_format=torch.channels_last)
        return engine, lambda batch: model(batch.contiguous(memory_format=torch.channels_last))
    return engine, model
