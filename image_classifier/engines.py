"""How the forward pass runs: the engines (PyTorch, OpenVINO), the tuner that picks one for this machine,
the verified conversion cache, and the check that keeps non-finite results from ever becoming an answer.

`setup_engine` is the entry: `exact` runs PyTorch fp32, the reference; `fast` times the candidate engines on
this machine at first start, keeps those whose answers match the reference's (`answer_drift`), picks the
fastest (`choose_engine`), and caches the decision beside the converted model, so that later starts pay
nothing.

The cache ($IMAGE_CLASSIFIER_CACHE, else ~/.cache/image-classifier) holds one folder per converted model
with a manifest of its files' sizes and SHA-256 digests, written with the files and checked before every
load. A damaged entry is rebuilt (one log line); entries appear by renaming a complete folder into place, so
processes starting together each convert and one copy wins; a cache that can't be written is warned about
once and the conversion kept in memory.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

PRECISIONS = ("fast", "exact")
"""fast: the quickest engine that keeps the answers, tuned per machine; exact: PyTorch fp32, the reference."""
ENGINES = {
    "torch-fp32": "PyTorch fp32, the reference",
    "torch-fp32-channels-last": "PyTorch fp32, channels_last",
    "torch-bf16-channels-last": "PyTorch bf16 autocast, channels_last",
    "torch-fp16": "PyTorch fp16",
    "torch-fp16-channels-last": "PyTorch fp16, channels_last",
    "openvino-fp32": "OpenVINO fp32",
    "openvino-bf16": "OpenVINO bf16",
}
"""Every engine by name (`--engine NAME` forces one) and how it reads on the page."""
REFERENCE = "torch-fp32"

PROBABILITY_TOLERANCE = 0.02
"""Largest change of a top-5 probability (against the reference) of an engine that keeps the answers."""
FLAT_BELOW = 0.05
"""An answer whose top probability is below this is flat (random weights give about 0.001-0.01): its
probabilities can hardly move by PROBABILITY_TOLERANCE whatever an engine does, so it is judged in logits."""
SPREAD_TOLERANCE = 0.07
"""For flat answers: largest change of the gap between the top logit and each top-5 logit, as a fraction of
the logits' spread (standard deviation over the classes). The probability rule restated: 0.02 at a top
probability of 0.5 is a gap change of 0.08, and a trained model's logits spread by about 1.15
(EfficientNet-Lite0 on 9 real photos): 0.08 / 1.15 = 0.07."""
MIN_SPEEDUP = 1.10
"""A reduced-precision engine is picked only where it is at least this much faster than the best fp32 one, so
timing noise never trades exactness for nothing."""
TIMING_BUDGET_S = 0.5
"""Time the tuner spends timing after WARMUP_CALLS per engine: rounds until this is spent and MIN_ROUNDS are
done (MAX_ROUNDS at most; fewer where MIN_ROUNDS would take over 4x the budget)."""
WARMUP_CALLS = 2
MIN_ROUNDS = 5
MAX_ROUNDS = 15
TUNER_VERSION = 1
"""Part of every decision's cache key: bump it when the rules above change, and machines tune again."""
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


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 (AVX-512 BF16 or AMX), as OpenVINO (or else Linux) reports it."""
    if openvino_installed():
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    flags = _cpuinfo().get("flags", "").split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def candidate_engines(device: torch.device, *, openvino: bool, bf16: bool) -> list[str]:
    """The engines the tuner times on `device`, full precision first.

    CUDA: fp32 and fp16, each plain and channels_last. CPU: OpenVINO fp32, and bf16 where the CPU has it;
    without OpenVINO, PyTorch fp32 (plain and channels_last) and bf16 where the CPU has it.
    """
    if device.type == "cuda":
        return ["torch-fp32", "torch-fp32-channels-last", "torch-fp16", "torch-fp16-channels-last"]
    if device.type != "cpu":
        return [REFERENCE]
    if openvino:
        return ["openvino-fp32", "openvino-bf16"] if bf16 else ["openvino-fp32"]
    fallbacks = ["torch-fp32", "torch-fp32-channels-last"]
    return [*fallbacks, "torch-bf16-channels-last"] if bf16 else fallbacks


def select_engine(device: torch.device, precision: str = "fast", openvino: bool | None = None) -> str:
    """The engine a precision starts from before any tuning: exact -> PyTorch fp32; fast -> OpenVINO fp32 on
    the CPU where installed, PyTorch channels_last without it, fp16 channels_last on CUDA."""
    _check_precision(precision)
    if precision == "exact":
        return REFERENCE
    if device.type == "cuda":
        return "torch-fp16-channels-last"
    if openvino is None:
        openvino = openvino_installed()
    return "openvino-fp32" if openvino and device.type == "cpu" else "torch-fp32-channels-last"


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


# --- non-finite results ------------------------------------------------------------------------


def check_finite(*outputs: torch.Tensor | None, model: str, engine: str) -> None:
    """Raise `NonFiniteResultError`, and log the model and engine, where a row of `outputs` is not finite."""
    bad = None
    for output in outputs:
        if output is not None:
            rows = ~torch.isfinite(output).flatten(1).all(dim=1)
            bad = rows if bad is None else bad | rows
    if bad is not None and bool(bad.any()):
        logger.error(
            "%s on %s gave a non-finite result (NaN or infinity) for %d of %d images: refused, not shown.",
            model,
            engine,
            int(bad.sum()),
            bad.numel(),
        )
        raise NonFiniteResultError(NON_FINITE_MESSAGE)


# --- the verified cache ------------------------------------------------------------------------

MANIFEST = "manifest.json"
_unwritable_warned: set[Path] = set()


class CacheDamaged(Exception):
    """A cache entry failed its check; the message says how."""


def cache_dir() -> Path:
    """Where converted models and engine decisions are kept: $IMAGE_CLASSIFIER_CACHE, else
    $XDG_CACHE_HOME/image-classifier (~/.cache/image-classifier)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "image-classifier"
    return Path(os.environ.get("IMAGE_CLASSIFIER_CACHE", default))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_entry(folder: Path) -> None:
    """Raise `CacheDamaged` unless each file in the manifest of `folder` has its recorded size and digest."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CacheDamaged(f"no readable manifest: {e}") from None
    for name, expected in files.items():
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError:
            raise CacheDamaged(f"{name} is missing") from None
        if size != expected["bytes"]:
            raise CacheDamaged(f"{name} is {size:,} bytes, not {expected['bytes']:,}")
        if file_sha256(path) != expected["sha256"]:
            raise CacheDamaged(f"{name} does not match its checksum")


def write_entry(folder: Path, fill: Callable[[Path], None]) -> bool:
    """Create the cache entry `folder` whole or not at all: `fill(temporary folder)` writes the files, their
    sizes and digests go into the manifest, and the folder is renamed into place. Where another process got
    there first, its copy stays. False, after one warning per process, where the cache can't be written."""
    parent = folder.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=".incomplete-", dir=parent))
    except OSError as e:
        _warn_unwritable(e)
        return False
    try:
        fill(temporary)
        files = {
            path.name: {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
            for path in sorted(temporary.iterdir())
        }
        manifest = {"files": files, "created": time.strftime("%FT%T%z")}
        (temporary / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        try:
            os.rename(temporary, folder)
        except OSError:
            if not folder.is_dir():
                raise
        return True  # ours, or an identical one another process renamed into place first
    except OSError as e:  # read-only, full, quota...
        _warn_unwritable(e)
        return False
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def discard_entry(folder: Path) -> None:
    """Take a damaged entry out of the way (renamed first, so no reader ever sees half of it deleted)."""
    trash = folder.with_name(f".damaged-{uuid.uuid4().hex}")
    try:
        os.rename(folder, trash)
    except OSError:
        return  # gone already (another process repaired it), or the cache is read-only
    shutil.rmtree(trash, ignore_errors=True)


def _warn_unwritable(error: OSError) -> None:
    """One warning per process and cache folder: the work goes on in memory."""
    folder = cache_dir()
    if folder not in _unwritable_warned:
        _unwritable_warned.add(folder)
        logger.warning(
            "Can't write to the model cache %s (%s): the converted model and the engine decision are kept in "
            "memory only, so every start converts and tunes again. Set IMAGE_CLASSIFIER_CACHE to a writable "
            "folder to keep them.",
            folder,
            error.strerror or error,
        )


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
    if engine.startswith("torch-bf16"):
        device_type = next(model.parameters()).device.type

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


# --- is it the same answer? ---------------------------------------------------------------------


@dataclass(frozen=True)
class Drift:
    """How far an engine's answers moved from the reference's, the worst over the check's photos."""

    top1_same: bool
    probability: float
    """Largest change of a reference top-5 probability."""
    spread: float
    """On flat answers only (see FLAT_BELOW): largest change of a top-5 logit gap, in units of the spread."""

    def keeps_the_answers(self) -> bool:
        return (
            self.top1_same and self.probability <= PROBABILITY_TOLERANCE and self.spread <= SPREAD_TOLERANCE
        )


def answer_drift(reference: torch.Tensor, candidate: torch.Tensor) -> Drift:
    """Compare logits (N, classes) of the same N photos from the reference and a candidate engine.

    Top-1 must be identical on every photo. Confident answers: top-5 probabilities within
    PROBABILITY_TOLERANCE. Flat answers (random weights), whose probabilities barely move: the gaps between
    the top logit and the other top-5 logits within SPREAD_TOLERANCE of the logits' spread.
    """
    reference, candidate = reference.float(), candidate.float()
    if not torch.isfinite(candidate).all():
        return Drift(False, float("inf"), float("inf"))
    p_ref, p_cand = reference.softmax(-1), candidate.softmax(-1)
    top5 = p_ref.topk(min(5, reference.shape[-1]), dim=-1).indices
    top1_same = bool((p_ref.argmax(-1) == p_cand.argmax(-1)).all())
    probability = (p_cand.gather(-1, top5) - p_ref.gather(-1, top5)).abs().amax().item()
    flat = p_ref.amax(-1) < FLAT_BELOW
    spread = 0.0
    if flat.any():
        first = top5[:, :1]
        gaps_ref = reference.gather(-1, top5) - reference.gather(-1, first)
        gaps_cand = candidate.gather(-1, top5) - candidate.gather(-1, first)
        scale = reference.std(-1, keepdim=True).clamp(min=1e-12)
        spread = ((gaps_cand - gaps_ref).abs() / scale).amax(-1)[flat].max().item()
    return Drift(top1_same, probability, spread)


def choose_engine(timings_ms: dict[str, float], kept: dict[str, bool]) -> str | None:
    """The fastest engine that keeps the answers, or None where none does.

    A reduced-precision engine (bf16, fp16) wins only where it is at least MIN_SPEEDUP faster than the fastest
    fp32 one that keeps the answers."""
    usable = {engine: ms for engine, ms in timings_ms.items() if kept.get(engine)}
    full = {engine: ms for engine, ms in usable.items() if "fp32" in engine}
    reduced = {engine: ms for engine, ms in usable.items() if "fp32" not in engine}
    best_full = min(full, key=full.__getitem__, default=None)
    best_reduced = min(reduced, key=reduced.__getitem__, default=None)
    if best_full is None:
        return best_reduced
    if best_reduced is not None and usable[best_reduced] * MIN_SPEEDUP <= usable[best_full]:
        return best_reduced
    return best_full


def time_engines(
    runners: dict[str, Runner],
    batch: torch.Tensor,
    *,
    budget_s: float = TIMING_BUDGET_S,
    synchronize: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Fastest milliseconds per call of each runner on `batch`, from rounds in turn (drift on a busy
    machine hits all alike) after a warm-up. The fastest call, not the median: other work on the machine
    only ever adds time, so the minimum is the steadiest estimate of an engine's cost (as `timeit` advises).
    On the shared 2-core VM at a load of 20, the median of three rounds once put OpenVINO bf16 ahead for
    ResNet-18, which is 1.5x slower there."""

    def call(run: Runner) -> float:
        start = time.perf_counter()
        run(batch)
        synchronize()
        return (time.perf_counter() - start) * 1000

    with torch.inference_mode():
        for run in runners.values():
            for _ in range(WARMUP_CALLS):
                call(run)
        samples: dict[str, list[float]] = {name: [] for name in runners}
        started = time.perf_counter()
        for done in range(1, MAX_ROUNDS + 1):
            for name, run in runners.items():
                samples[name].append(call(run))
            elapsed = time.perf_counter() - started
            if (done >= MIN_ROUNDS and elapsed > budget_s) or elapsed > 4 * budget_s:
                break
    return {name: min(times) for name, times in samples.items()}


# --- the tuner and its decisions ---------------------------------------------------------------


@dataclass(frozen=True)
class FidelityCheck:
    """What the tuner compares engines on: the same photos preprocessed the reference's way and the fast way.

    `key` names the photos and preprocessing (for the decision's cache key); `inputs()` returns both batches,
    (reference inputs, fast inputs), and is called only when tuning runs."""

    key: str
    inputs: Callable[[], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class EngineChoice:
    """Which engine runs the model, and how it was chosen: `how` is "tuned" (timed at this start), "cached"
    (timed at an earlier start on this machine), "forced" (asked for by name), "exact" (precision="exact") or
    "fallback" (no candidate kept the answers: the reference)."""

    engine: str
    how: str
    machine: str = ""
    timings_ms: dict[str, float] = field(default_factory=dict)
    drift: dict[str, dict] = field(default_factory=dict)
    tuning_s: float = 0.0
    """Seconds the tuner added to this start."""
    setup_s: float = 0.0
    """Seconds converting the model and compiling it in fp32, which a start without a cache pays anyway."""

    def describe(self) -> str:
        """One phrase for the page, e.g. "OpenVINO fp32, the fastest engine on this machine (...) that keeps
        the answers"."""
        name = ENGINES.get(self.engine, self.engine)
        if self.how in ("tuned", "cached"):
            return f"{name}, the fastest engine on this machine ({self.machine}) that keeps the answers"
        if self.how == "forced":
            return f"{name}, chosen by hand"
        return f"{name}, exact" if self.engine == REFERENCE else name

    def log_line(self, model: str) -> str:
        """What the log says about this choice, in one line."""
        if self.how == "tuned":
            timings = ", ".join(f"{engine} {ms:.1f} ms" for engine, ms in self.timings_ms.items())
            dropped = [engine for engine, report in self.drift.items() if not report["kept"]]
            return (
                f"{model}: engine {self.engine} on {self.machine}"
                + (f" ({timings})" if timings else "")
                + (f"; {', '.join(dropped)} changed the answers" if dropped else "")
                + f"; tuned in {self.tuning_s:.1f} s"
                + (f" besides {self.setup_s:.1f} s converting the model" if self.setup_s >= 0.05 else "")
                + ", kept for later starts."
            )
        if self.how == "cached":
            return f"{model}: engine {self.engine} on {self.machine}, as tuned at an earlier start."
        return f"{model}: engine {self.engine} ({self.how})."


def _cpuinfo() -> dict[str, str]:
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


def machine_identity(device: torch.device) -> tuple[str, str]:
    """(display name, cache-key text) of what runs the model: the GPU, or the CPU's model name and flags."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        capability = ".".join(map(str, torch.cuda.get_device_capability(device)))
        return name, f"{name}|{capability}|cuda {torch.version.cuda}"
    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine()
    flags = info.get("flags") or info.get("Features") or platform.machine()
    return name, f"{name}|{flags}|{os.cpu_count()} CPUs|{torch.get_num_threads()} threads"


def _decision_path(key: str) -> Path:
    return cache_dir() / "decisions" / f"{key}.json"


def _read_decision(key: str) -> dict | None:
    path = _decision_path(key)
    try:
        decision = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        logger.warning("The engine decision in %s is unreadable (%s): tuning again.", path, e)
        return None
    if not isinstance(decision, dict) or decision.get("engine") not in ENGINES:
        logger.warning("The engine decision in %s is not valid: tuning again.", path)
        return None
    return decision


def _write_decision(key: str, decision: dict) -> None:
    path = _decision_path(key)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=".incomplete-", suffix=".json", dir=path.parent)
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(decision, file, indent=1, allow_nan=False)
        os.replace(temporary, path)
    except OSError as e:
        _warn_unwritable(e)
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)


def _synthetic_check(example: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where there are no photos to check on: three seeded noise images, the same for both sides."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn((3, *example.shape[1:]), generator=generator, dtype=example.dtype)
    return inputs, inputs


def setup_engine(
    model: torch.nn.Module,
    device: torch.device,
    example: torch.Tensor,
    *,
    precision: str = "fast",
    engine: str | None = None,
    check: FidelityCheck | None = None,
    name: str | None = None,
) -> tuple[EngineChoice, Runner]:
    """Pick the engine for `model` (already on `device`, in eval mode) and set it up.

    `engine` forces one by name. Otherwise exact runs the reference and fast the tuned choice: read from the
    cache where this model was tuned on this machine before, else tuned now (candidates checked against
    the reference on `check`'s photos, then timed) and cached.
    """
    _check_precision(precision)
    name = name or type(model).__name__
    if engine is not None:
        if precision == "exact" and engine != REFERENCE:
            raise EngineUnavailable(
                f"precision 'exact' always runs {REFERENCE}: use precision 'fast' with {engine}."
            )
        choice = EngineChoice(engine, "forced" if engine != REFERENCE or precision == "fast" else "exact")
        return choice, prepare_engine(model, engine, example.to(device))
    if precision == "exact":
        return EngineChoice(REFERENCE, "exact"), torch_runner(model, REFERENCE)

    openvino = openvino_installed() and device.type == "cpu"
    candidates = candidate_engines(device, openvino=openvino, bf16=device.type == "cpu" and cpu_has_bf16())
    machine, machine_key = machine_identity(device)
    digest = weights_digest(model)
    versions = f"torch {torch.__version__}"
    if openvino:
        import openvino as ov

        versions += f"|openvino {ov.__version__}"
    check_key = check.key if check is not None else "synthetic"
    key_text = "|".join(
        [str(TUNER_VERSION), digest, str(tuple(example.shape)), versions, machine_key, check_key]
    )
    key = hashlib.sha256(f"{key_text}|{','.join(candidates)}".encode()).hexdigest()[:32]

    decision = _read_decision(key)  # a candidate, or a fallback (the reference, PyTorch for OpenVINO)
    if decision is not None:
        try:
            runner = _build(model, decision["engine"], example, digest, copy_model=False)
        except Exception as e:  # noqa: BLE001 (a cached decision whose engine fails here: tune again)
            logger.warning("The cached engine %s failed to start (%s): tuning again.", decision["engine"], e)
        else:
            how = "cached" if decision.get("how", "tuned") == "tuned" else "fallback"
            choice = EngineChoice(decision["engine"], how, machine, decision.get("timings_ms", {}))
            logger.info(choice.log_line(name))
            return choice, runner

    started = time.perf_counter()
    reference_inputs, fast_inputs = check.inputs() if check is not None else _synthetic_check(example)
    with torch.inference_mode():
        reference = _logits(model(reference_inputs.to(device)))
    if not torch.isfinite(reference).all():
        logger.warning(
            "%s's own answers on the check photos are not finite (NaN or infinity): no engine is tuned; %s "
            "runs it, and its non-finite results are refused.",
            name,
            REFERENCE,
        )
        return EngineChoice(REFERENCE, "fallback", machine), torch_runner(model, REFERENCE)
    spent: dict[str, float] = {}
    runners = _build_candidates(model, candidates, example, digest, spent)
    with torch.inference_mode():
        drift = {}
        for candidate, run in runners.items():
            try:
                logits = torch.cat([_logits(run(x[None].to(device))) for x in fast_inputs])
                drift[candidate] = answer_drift(reference, logits)
            except Exception as e:  # noqa: BLE001 (an engine that fails on a real input is no candidate)
                logger.warning("%s failed on the check photos (%s): not used.", candidate, e)
    kept = {candidate: d.keeps_the_answers() for candidate, d in drift.items()}
    usable = {candidate: runners[candidate] for candidate in runners if kept.get(candidate)}
    timings: dict[str, float] = {}
    if len(usable) > 1:
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        timings = time_engines(usable, example.to(device), synchronize=sync)
        chosen = choose_engine(timings, kept)
        full = [engine for engine in timings if "fp32" in engine]
        if chosen is not None and "fp32" not in chosen and full:
            # Before trading exactness for speed, time the two again: a burst of load on a shared machine
            # must not pass for a faster engine.
            best_full = min(full, key=timings.__getitem__)
            again = time_engines(
                {e: usable[e] for e in (best_full, chosen)}, example.to(device), synchronize=sync
            )
            if choose_engine(again, kept) != chosen:
                chosen = best_full
    else:
        chosen = next(iter(usable), None)  # nothing to time
    how = "tuned"
    if chosen is None:
        logger.warning("No engine kept %s's answers on the check photos: using %s.", name, REFERENCE)
        chosen, how, runner = REFERENCE, "fallback", torch_runner(model, REFERENCE)
    elif chosen.startswith("openvino"):
        runner = runners[chosen]
    else:
        runner = torch_runner(model, chosen)  # set up in place now; the candidates were copies
    # What any start without a cache pays anyway (converting, compiling fp32) is not the tuner's cost.
    setup_s = spent.get("conversion", 0.0) + spent.get("compile fp32", 0.0)
    tuning_s = time.perf_counter() - started - setup_s
    report = {candidate: {"kept": kept[candidate], **_json_safe(vars(d))} for candidate, d in drift.items()}
    timings_ms = {candidate: round(ms, 2) for candidate, ms in timings.items()}
    choice = EngineChoice(chosen, how, machine, timings_ms, report, tuning_s, setup_s)
    decision = {"engine": chosen, "how": how, "machine": machine, "timings_ms": timings_ms, "drift": report}
    _write_decision(
        key, {**decision, "tuning_seconds": round(tuning_s, 2), "created": time.strftime("%FT%T%z")}
    )
    logger.info(choice.log_line(name))
    return choice, runner


def _json_safe(values: dict) -> dict:
    return {
        k: v if not isinstance(v, float) else (round(v, 6) if v == v and abs(v) != float("inf") else None)
        for k, v in values.items()
    }


def _logits(outputs: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return (outputs[0] if isinstance(outputs, tuple) else outputs).float().cpu()


def _build(model, engine: str, example: torch.Tensor, digest: str, *, copy_model: bool) -> Runner:
    if engine.startswith("openvino"):
        return openvino_runners(model, example, digest, [engine.removeprefix("openvino-")])[engine]
    return torch_runner(model, engine, copy_model=copy_model)


def _build_candidates(
    model, candidates: Sequence[str], example: torch.Tensor, digest: str, spent: dict[str, float]
) -> dict[str, Runner]:
    """Runners for the candidates that start here (PyTorch ones on copies of the model). Where OpenVINO can't
    take the model, PyTorch's CPU engines stand in."""
    runners: dict[str, Runner] = {}
    openvino = [c.removeprefix("openvino-") for c in candidates if c.startswith("openvino")]
    if openvino:
        try:
            runners.update(openvino_runners(model, example, digest, openvino, spent))
        except Exception as e:  # noqa: BLE001 (a missing plugin, an unsupported layer: PyTorch always works)
            logger.warning("OpenVINO could not take the model (%s); using PyTorch instead.", e)
            candidates = candidate_engines(
                torch.device("cpu"), openvino=False, bf16="openvino-bf16" in candidates
            )
    for candidate in candidates:
        if not candidate.startswith("openvino"):
            runners[candidate] = torch_runner(model, candidate, copy_model=True)
    return runners
