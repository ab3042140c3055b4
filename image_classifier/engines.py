"""How the forward pass runs: the engines (PyTorch, OpenVINO) set up for a model, the conversion to OpenVINO
(kept in the verified cache, `model_cache`), and the check that keeps non-finite results from ever becoming
an answer. Which engine runs is the tuner's choice (`tuner.setup_engine`).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import threading
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch

from image_classifier.model_cache import CacheDamaged, cache_dir, discard_entry, verify_entry, write_entry

PRECISIONS = ("fast", "exact")
"""fast: the quickest engine that keeps the answers, tuned per machine; exact: PyTorch fp32, the reference."""
ENGINES = {
    "torch-fp32": "PyTorch fp32, the reference",
    "torch-fp32-channels-last": "PyTorch fp32, channels_last",
    "torch-bf16-channels-last": "PyTorch bf16, channels_last (autocast on the CPU)",
    "torch-bf16": "PyTorch bf16",
    "torch-fp16": "PyTorch fp16",
    "torch-fp16-channels-last": "PyTorch fp16, channels_last",
    "openvino-fp32": "OpenVINO fp32",
    "openvino-bf16": "OpenVINO bf16",
}
CUDA_EAGER = (
    "torch-fp32",
    "torch-fp32-channels-last",
    "torch-fp16",
    "torch-fp16-channels-last",
    "torch-bf16",
    "torch-bf16-channels-last",
)
GRAPHS = "-graphs"
"""Suffix of the CUDA engines replayed from captured CUDA graphs (`cuda.CudaGraphRunner`)."""
ENGINES.update({f"{engine}{GRAPHS}": f"{ENGINES[engine]}, CUDA graphs" for engine in CUDA_EAGER})
"""Every engine by name (`--engine NAME` forces one) and how it reads on the page."""
REFERENCE = "torch-fp32"

NON_FINITE_MESSAGE = (
    "The model's answer for this image was not a number (NaN or infinity), so it is not shown. "
    "This is a fault in the model or its engine, not in the photo."
)
MEMORY_PER_WEIGHT = {
    "openvino-fp32": 3.0,
    "openvino-bf16": 3.0,
    "torch-fp32-channels-last": 1.5,
    "torch-fp32": 1.5,
    "torch-bf16-channels-last": 1.5,
    "torch-fp16": 1.0,
    "torch-fp16-channels-last": 1.0,
    "torch-bf16": 1.0,
}
"""Resident memory a loaded model takes per byte of its fp32 weights, on each engine. OpenVINO holds three
copies: the PyTorch module, the converted graph (kept to compile other batch sizes) and the compiled model;
PyTorch one, plus the buffers of its forward pass."""
MEMORY_PER_MODEL_MB = 20
"""And per model, whatever its size: compiled kernels, buffers. With the above, within 20 % of the resident
memory that bench/models.py measured for each of the eight default models on OpenVINO."""

logger = logging.getLogger(__name__)
Runner = Callable[..., "torch.Tensor | tuple[torch.Tensor, ...]"]
"""`run(batch, threads=None)`: the model's outputs for `batch`. `threads` caps the threads of that pass
(OpenVINO compiles a model for it, once); PyTorch's engines use their global pool and ignore it."""


class EngineUnavailable(ValueError):
    """An engine was asked for that can't run here; the message says why."""


class NonFiniteResultError(RuntimeError):
    """The model's output held NaN or infinity: a fault of the model or its engine, never an answer."""


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


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def cpu_info() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (Linux), else nothing."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            for line in file:
                if not line.strip():
                    break
                name, _, value = line.partition(":")
                info[name.strip()] = value.strip()
    except OSError:
        pass
    return info


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 (AVX-512 BF16 or AMX), as OpenVINO (or else Linux) reports it."""
    if openvino_installed():
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    flags = cpu_info().get("flags", "").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def candidate_engines(device: torch.device, *, openvino: bool, bf16: bool) -> list[str]:
    """The engines the tuner times on `device`, full precision first.

    CUDA: fp32, fp16 and bf16, each plain and channels_last, each eager and replayed from CUDA graphs. CPU:
    OpenVINO fp32, and bf16 where the CPU has it; without OpenVINO, PyTorch fp32 (plain and channels_last)
    and bf16 where the CPU has it.
    """
    if device.type == "cuda":
        return [*CUDA_EAGER, *(f"{engine}{GRAPHS}" for engine in CUDA_EAGER)]
    if device.type != "cpu":
        return [REFERENCE]
    if openvino:
        return ["openvino-fp32", "openvino-bf16"] if bf16 else ["openvino-fp32"]
    fallbacks = ["torch-fp32", "torch-fp32-channels-last"]
    return [*fallbacks, "torch-bf16-channels-last"] if bf16 else fallbacks


def select_engine(device: torch.device, precision: str = "fast", openvino: bool | None = None) -> str:
    """The engine a precision starts from before any tuning: exact -> PyTorch fp32; fast -> OpenVINO fp32 on
    the CPU where installed, PyTorch channels_last without it, fp16 channels_last on CUDA."""
    check_precision(precision)
    if precision == "exact":
        return REFERENCE
    if device.type == "cuda":
        return "torch-fp16-channels-last"
    if openvino is None:
        openvino = openvino_installed()
    return "openvino-fp32" if openvino and device.type == "cpu" else "torch-fp32-channels-last"


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


# --- non-finite results ------------------------------------------------------------------------


def check_finite(*outputs: torch.Tensor | None, model: str, engine: str) -> None:
    """Raise `NonFiniteResultError`, and log the model and engine, where a row of `outputs` is not finite."""
    bad = None
    for output in outputs:
        if output is not None:
            rows = ~_finite_rows(output)
            bad = rows if bad is None else bad | rows
    if bad is not None and bool(bad.any()):
        log_non_finite(model, engine, int(bad.sum()), bad.size)
        raise NonFiniteResultError(NON_FINITE_MESSAGE)


def log_non_finite(model: str, engine: str, count: int, total: int) -> None:
    """Log that `count` of `total` images got a non-finite result from `model` on `engine`."""
    logger.error(
        "%s on %s gave a non-finite result (NaN or infinity) for %d of %d images: refused, not shown.",
        model,
        engine,
        count,
        total,
    )


def _finite_rows(output: torch.Tensor) -> np.ndarray:
    """Whether each row (image) of `output` is finite throughout. In NumPy, on one thread: torch splits a
    feature map (50,000 values) over its OpenMP threads, which then wait for the cores OpenVINO's threads
    still hold after the forward pass."""
    values = output.detach()
    if values.dtype not in (torch.float32, torch.float64):
        values = values.float()  # bf16 and fp16 have no NumPy type
    values = values.cpu().numpy()
    return np.isfinite(values.reshape(len(values), -1)).all(axis=1)


def weights_digest(model: torch.nn.Module) -> str:
    """A digest of `model`'s class and every weight, the root of its cache keys."""
    key = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        key.update(name.encode())
        key.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return key.hexdigest()


# --- engines -----------------------------------------------------------------------------------


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


def openvino_model(model: torch.nn.Module, example: torch.Tensor, digest: str):
    """`model` converted to OpenVINO, from the verified cache, or converted now and cached.

    Returns (model, the cache folder it was read from or None)."""
    import openvino as ov

    key = hashlib.sha256(f"{digest}|{tuple(example.shape)}|{ov.__version__}".encode()).hexdigest()[:32]
    folder = cache_dir() / "openvino" / key
    if folder.is_dir():
        try:
            verify_entry(folder)
            return ov.Core().read_model(folder / "model.xml"), folder
        except (CacheDamaged, RuntimeError, OSError) as e:
            logger.warning(
                "The cached conversion in %s is damaged (%s): converting the model again.", folder, e
            )
            discard_entry(folder)
    converted = convert_to_openvino(model, example)
    # A new conversion is kept only if it answers as PyTorch does (fp32, on a random input).
    check_against_pytorch(model, OpenVINORunner(converted, example.shape[1:], "f32"), example)
    write_entry(folder, lambda into: ov.save_model(converted, into / "model.xml", compress_to_fp16=False))
    return converted, None


class OpenVINORunner:
    """An OpenVINO model compiled for the CPU at one inference precision, with a static-shape compile per
    batch size (about 15 % faster than a dynamic batch) and per cap on threads (None: all cores).
    Thread-safe: an infer request per call."""

    def __init__(self, graph, sample_shape: Sequence[int], precision: str) -> None:
        import openvino as ov

        self.core, self.graph, self.sample_shape = ov.Core(), graph, list(sample_shape)
        # The precision is always explicit: on CPUs with bf16 OpenVINO would otherwise pick it by itself.
        self.config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        self._compiled: dict[tuple[int, int | None], object] = {}
        self._lock = threading.Lock()
        self.compiled_for(1)

    def compiled_for(self, batch_size: int, threads: int | None = None):
        with self._lock:
            if (batch_size, threads) not in self._compiled:
                static = self.graph.clone()
                static.reshape([batch_size, *self.sample_shape])
                config = dict(self.config)
                if threads is not None:
                    config["INFERENCE_NUM_THREADS"] = threads
                self._compiled[batch_size, threads] = self.core.compile_model(static, "CPU", config)
            return self._compiled[batch_size, threads]

    def __call__(
        self, batch: torch.Tensor, threads: int | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        request = self.compiled_for(batch.shape[0], threads).create_infer_request()
        results = request.infer([batch.numpy()])
        outputs = tuple(torch.from_numpy(results[i].copy()) for i in range(len(results)))
        return outputs if len(outputs) > 1 else outputs[0]


def openvino_runners(
    model: torch.nn.Module,
    example: torch.Tensor,
    digest: str,
    precisions: Sequence[str],
    spent: dict[str, float] | None = None,
) -> dict[str, OpenVINORunner]:
    """`openvino-<precision>` -> runner. A cached conversion that fails to compile is rebuilt once.

    `spent` receives the seconds taken by the conversion (or the cache's read) and by each compile."""
    hints = {"fp32": "f32", "bf16": "bf16"}
    spent = {} if spent is None else spent

    def compiled(graph) -> dict[str, OpenVINORunner]:
        runners = {}
        for precision in precisions:
            started = time.perf_counter()
            runners[f"openvino-{precision}"] = OpenVINORunner(graph, example.shape[1:], hints[precision])
            spent[f"compile {precision}"] = time.perf_counter() - started
        return runners

    started = time.perf_counter()
    graph, cached_in = openvino_model(model, example, digest)
    spent["conversion"] = time.perf_counter() - started
    try:
        return compiled(graph)
    except RuntimeError as e:
        if cached_in is None:
            raise
        logger.warning(
            "The cached conversion in %s does not load (%s): converting the model again.", cached_in, e
        )
        discard_entry(cached_in)
        graph, _ = openvino_model(model, example, digest)
        return compiled(graph)


def torch_runner(model: torch.nn.Module, engine: str, *, copy_model: bool = False) -> Runner:
    """`model` set up for a PyTorch engine: in place, or on a copy (the tuner keeps the reference intact).
    The runner takes `threads` like every other and ignores it (PyTorch's thread pool is global)."""
    if engine not in ENGINES or engine.startswith("openvino"):
        raise EngineUnavailable(f"Unknown engine {engine!r}: use one of {', '.join(ENGINES)}.")
    if engine.endswith(GRAPHS):
        from image_classifier.cuda import CudaGraphRunner

        return CudaGraphRunner(torch_runner(model, engine.removesuffix(GRAPHS), copy_model=copy_model))
    if engine == REFERENCE:
        return lambda batch, threads=None: model(batch)
    if copy_model:
        model = copy.deepcopy(model)
    if engine.startswith("torch-fp16"):
        model = model.half()
    layout = torch.channels_last if engine.endswith("channels-last") else torch.contiguous_format
    model = model.to(memory_format=layout)
    if engine.startswith("torch-fp16"):
        return lambda batch, threads=None: model(batch.half().contiguous(memory_format=layout))
    device_type = next(model.parameters()).device.type
    if engine.startswith("torch-bf16") and device_type == "cuda":  # bf16 weights: faster than autocast
        model = model.to(torch.bfloat16)
        return lambda batch, threads=None: model(batch.to(torch.bfloat16).contiguous(memory_format=layout))
    if engine.startswith("torch-bf16"):

        def bf16(batch: torch.Tensor, threads: int | None = None):
            with torch.autocast(device_type, dtype=torch.bfloat16):
                return model(batch.contiguous(memory_format=layout))

        return bf16
    return lambda batch, threads=None: model(batch.contiguous(memory_format=layout))


def prepare_engine(
    model: torch.nn.Module, engine: str, example: torch.Tensor, *, digest: str | None = None
) -> Runner:
    """`model` set up for `engine` (a name from ENGINES): a batch -> outputs function.

    `example` is one preprocessed input batch (shape and dtype). Raises `EngineUnavailable` where `engine`
    can't run here."""
    if engine not in ENGINES:
        raise EngineUnavailable(f"Unknown engine {engine!r}: use one of {', '.join(ENGINES)}.")
    device = next(iter(model.parameters()), example).device
    if engine.startswith("openvino"):
        if device.type != "cpu":
            raise EngineUnavailable(f"{engine} runs on the CPU only: use --device cpu, or another engine.")
        if not openvino_installed():
            raise EngineUnavailable(f"{engine} needs OpenVINO: pip install openvino.")
        digest = digest or weights_digest(model)
        return openvino_runners(model, example, digest, [engine.removeprefix("openvino-")])[engine]
    if engine.startswith("torch-fp16") and device.type != "cuda":
        logger.warning("%s is meant for CUDA; on the CPU it is slow.", engine)
    return torch_runner(model, engine)
