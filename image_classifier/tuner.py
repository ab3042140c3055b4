"""The tuner: which engine runs a model on this machine.

`setup_engine` is the entry. `exact` runs PyTorch fp32, the reference. `fast` builds the candidate engines
(`engines.candidate_engines`), keeps those whose answers match the reference's on the check photos
(`answer_drift`), times them and picks the fastest (`choose_engine`); a reduced precision must be
MIN_SPEEDUP faster than fp32 to win. The decision is cached beside the converted model, keyed by the
model's weights, the engines' versions and the machine, so later starts pay nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from image_classifier import engines
from image_classifier.engines import ENGINES, REFERENCE, EngineUnavailable, Runner, torch_runner
from image_classifier.model_cache import cache_dir, warn_unwritable

logger = logging.getLogger(__name__)

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
TUNER_VERSION = 2
"""Part of every decision's cache key: bump it when the rules above change, and machines tune again."""


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


def machine_identity(device: torch.device) -> tuple[str, str]:
    """(display name, cache-key text) of what runs the model: the GPU, or the CPU's model name and flags."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        capability = ".".join(map(str, torch.cuda.get_device_capability(device)))
        return name, f"{name}|{capability}|cuda {torch.version.cuda}"
    info = engines.cpu_info()
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
        warn_unwritable(e)
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
    keep_model: bool = False,
) -> tuple[EngineChoice, Runner]:
    """Pick the engine for `model` (already on `device`, in eval mode) and set it up.

    `engine` forces one by name. Otherwise exact runs the reference and fast the tuned choice: read from the
    cache where this model was tuned on this machine before, else tuned now (candidates checked against
    the reference on `check`'s photos, then timed at `example`'s batch size) and cached. The choice is made
    for `example`'s batch size: the page runs batch 1, the batch runner its own. `keep_model` sets the
    chosen engine up on a copy, leaving `model` in fp32 for a later choice at another batch size.
    """
    engines.check_precision(precision)
    name = name or type(model).__name__
    if engine is not None:
        if precision == "exact" and engine != REFERENCE:
            raise EngineUnavailable(
                f"precision 'exact' always runs {REFERENCE}: use precision 'fast' with {engine}."
            )
        choice = EngineChoice(engine, "forced" if engine != REFERENCE or precision == "fast" else "exact")
        return choice, engines.prepare_engine(model, engine, example.to(device))
    if precision == "exact":
        return EngineChoice(REFERENCE, "exact"), torch_runner(model, REFERENCE)

    openvino = engines.openvino_installed() and device.type == "cpu"
    candidates = engines.candidate_engines(
        device, openvino=openvino, bf16=device.type == "cpu" and engines.cpu_has_bf16()
    )
    machine, machine_key = machine_identity(device)
    digest = engines.weights_digest(model)
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
            runner = _build(model, decision["engine"], example, digest, copy_model=keep_model)
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
    elif chosen.startswith("openvino") or keep_model:
        runner = runners[chosen]  # PyTorch's candidates are copies: `model` stays as it was
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
        return engines.openvino_runners(model, example, digest, [engine.removeprefix("openvino-")])[engine]
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
            runners.update(engines.openvino_runners(model, example, digest, openvino, spent))
        except Exception as e:  # noqa: BLE001 (a missing plugin, an unsupported layer: PyTorch always works)
            logger.warning("OpenVINO could not take the model (%s); using PyTorch instead.", e)
            candidates = engines.candidate_engines(
                torch.device("cpu"), openvino=False, bf16="openvino-bf16" in candidates
            )
    for candidate in candidates:
        if not candidate.startswith("openvino"):
            runners[candidate] = torch_runner(model, candidate, copy_model=True)
    return runners
