"""Engines: the tuner's decisions (with forced timings), the verified conversion cache (damaged, truncated,
read-only, full, two processes at once) and non-finite results, which are never an answer."""

from __future__ import annotations

import copy
import errno
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import openvino as ov
import platformdirs  # a requirement: a missing OpenVINO fails here, never skips
import pytest
import torch
import torchvision

from classifier import Classifier, NonFiniteResultError
from conftest import EXAMPLES, ROOT
from image_classifier import engines, model_cache, tuner
from image_classifier.tuner import Drift, answer_drift, choose_engine

CAT = EXAMPLES / "cat.jpg"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty conversion cache of this test's own; warnings about it start afresh."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("IMAGE_CLASSIFIER_CACHE", str(folder))
    monkeypatch.setattr(model_cache, "_unwritable_warned", set())
    return folder


def test_the_cache_folder_is_the_systems_own_unless_image_classifier_cache_names_one(monkeypatch, tmp_path):
    monkeypatch.setenv("IMAGE_CLASSIFIER_CACHE", str(tmp_path / "mine"))
    assert model_cache.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("IMAGE_CLASSIFIER_CACHE")
    assert model_cache.cache_dir() == Path(platformdirs.user_cache_dir("image-classifier", appauthor=False))
    if sys.platform == "linux":  # the XDG rules: $XDG_CACHE_HOME, else ~/.cache
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert model_cache.cache_dir() == tmp_path / "xdg" / "image-classifier"
        monkeypatch.delenv("XDG_CACHE_HOME")
        assert model_cache.cache_dir() == Path.home() / ".cache" / "image-classifier"


@pytest.fixture(scope="module")
def resnet18() -> torch.nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


def warnings_in(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("image")
    ]


def same_answers(a: dict[str, float], b: dict[str, float]) -> bool:
    return list(a) == list(b) and all(math.isclose(a[k], b[k], rel_tol=1e-5, abs_tol=1e-7) for k in a)


# --- the decision, with forced timings -----------------------------------------------------------


def test_the_fastest_engine_that_keeps_the_answers_wins():
    both = {"openvino-fp32": True, "openvino-bf16": True}
    # A CPU where bf16 pays (AMD Zen 5, AVX-512 BF16, measured): bf16.
    assert choose_engine({"openvino-fp32": 17.0, "openvino-bf16": 7.0}, both) == "openvino-bf16"
    # The Xeon VM without AMX (measured): bf16 is slower, fp32 stays.
    assert choose_engine({"openvino-fp32": 29.8, "openvino-bf16": 41.8}, both) == "openvino-fp32"
    # Faster but changing the answers: never.
    assert choose_engine({"openvino-fp32": 17.0, "openvino-bf16": 7.0}, {**both, "openvino-bf16": False}) == (
        "openvino-fp32"
    )
    # Nothing keeps the answers: no choice (the caller falls back to the reference).
    assert choose_engine({"openvino-fp32": 17.0}, {"openvino-fp32": False}) is None


def test_reduced_precision_must_win_by_a_margin_not_by_noise():
    both = {"openvino-fp32": True, "openvino-bf16": True}
    assert choose_engine({"openvino-fp32": 30.0, "openvino-bf16": 28.0}, both) == "openvino-fp32"  # 7 %
    assert choose_engine({"openvino-fp32": 30.0, "openvino-bf16": 27.0}, both) == "openvino-bf16"  # 11 %
    # Among fp32 engines the fastest wins outright (same answers, so no margin needed).
    cpu = {"torch-fp32": True, "torch-fp32-channels-last": True, "torch-bf16-channels-last": True}
    timings = {"torch-fp32": 65.0, "torch-fp32-channels-last": 51.0, "torch-bf16-channels-last": 78.0}
    assert choose_engine(timings, cpu) == "torch-fp32-channels-last"
    cuda = dict.fromkeys(
        ["torch-fp32", "torch-fp32-channels-last", "torch-fp16", "torch-fp16-channels-last"], True
    )
    timings = {
        "torch-fp32": 4.0,
        "torch-fp32-channels-last": 3.5,
        "torch-fp16": 2.5,
        "torch-fp16-channels-last": 1.9,
    }
    assert choose_engine(timings, cuda) == "torch-fp16-channels-last"


def test_candidates_depend_on_the_device_and_the_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert engines.candidate_engines(cpu, openvino=True, bf16=True) == ["openvino-fp32", "openvino-bf16"]
    assert engines.candidate_engines(cpu, openvino=True, bf16=False) == ["openvino-fp32"]
    assert engines.candidate_engines(cpu, openvino=False, bf16=True) == [
        "torch-fp32",
        "torch-fp32-channels-last",
        "torch-bf16-channels-last",
    ]
    assert "torch-fp16-channels-last" in engines.candidate_engines(cuda, openvino=True, bf16=True)


def logits_with_top(probability: float, classes: int = 1000) -> torch.Tensor:
    """Logits whose softmax gives the first class `probability` and spreads the rest evenly-ish."""
    rest = torch.linspace(0, 1, classes - 1)
    logits = torch.cat([torch.zeros(1), rest])
    logits[0] = math.log(probability / (1 - probability) * torch.exp(rest).sum().item())
    return logits


def test_answer_drift_on_a_confident_answer_is_the_probability_rule():
    reference = logits_with_top(0.6).unsqueeze(0)
    assert answer_drift(reference, reference.clone()).keeps_the_answers()
    small, large = reference.clone(), reference.clone()
    small[0, 0] -= 0.04  # the top probability drops by about 0.01
    large[0, 0] -= 0.2  # by about 0.05
    assert answer_drift(reference, small).keeps_the_answers()
    drift = answer_drift(reference, large)
    assert drift.top1_same and drift.probability > 0.02 and not drift.keeps_the_answers()


def test_answer_drift_on_flat_random_weight_answers_is_judged_against_the_spread():
    """Random weights: probabilities are all about 0.001 and can't move by 0.02, so logits are compared."""
    torch.manual_seed(0)
    reference = torch.randn(3, 1000) * 0.6  # DenseNet-121 with random weights: spread about 0.6
    slight = reference + torch.randn(3, 1000) * 0.6 * 0.005  # bf16 measured: 1-2.5 % of the spread
    broken = reference + torch.randn(3, 1000) * 0.6 * 0.3  # an engine that really changes the model
    assert answer_drift(reference, slight).keeps_the_answers()
    drift = answer_drift(reference, broken)
    assert drift.probability < 0.02 and not drift.keeps_the_answers()  # the probability rule alone is blind
    flipped = reference.clone()
    top = flipped[0].argmax()
    flipped[0, top] = flipped[0].min() - 1
    assert not answer_drift(reference, flipped).top1_same
    assert answer_drift(reference, torch.full_like(reference, float("nan"))) == Drift(
        False, float("inf"), float("inf")
    )


# --- the tuner, end to end ---------------------------------------------------------------------


def forced(timings: dict[str, float], calls: list):
    def time_engines(runners, batch, **options):
        calls.append(sorted(runners))
        return {name: timings[name] for name in runners}

    return time_engines


def test_tuner_picks_times_once_and_later_starts_pay_nothing(cache, labels, resnet18, monkeypatch, caplog):
    calls: list = []
    monkeypatch.setattr(engines, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(tuner, "time_engines", forced({"openvino-fp32": 17.0, "openvino-bf16": 7.0}, calls))
    with caplog.at_level(logging.INFO, logger="image_classifier"):
        tuned = Classifier(copy.deepcopy(resnet18), labels, device="cpu", name="resnet18")
    assert calls == [["openvino-bf16", "openvino-fp32"]] * 2  # timed, then confirmed before giving up fp32
    assert tuned.engine == "openvino-bf16" and tuned.engine_choice.how == "tuned"
    (line,) = [r.getMessage() for r in caplog.records if r.name.startswith("image_classifier")]
    assert line.startswith("resnet18: engine openvino-bf16 on ") and "openvino-fp32 17.0 ms" in line
    assert "the fastest engine on this machine" in tuned.engine_choice.describe()
    assert len(tuned.predict(CAT)) == 5  # bf16 works here even where it is slow (the CPU has no bf16)

    caplog.clear()
    monkeypatch.setattr(tuner, "time_engines", lambda *a, **k: pytest.fail("timed again"))
    with caplog.at_level(logging.INFO, logger="image_classifier"):
        again = Classifier(copy.deepcopy(resnet18), labels, device="cpu", name="resnet18")
    assert again.engine == "openvino-bf16" and again.engine_choice.how == "cached"
    assert [r.getMessage() for r in caplog.records] == [
        f"resnet18: engine openvino-bf16 on {tuned.engine_choice.machine}, as tuned at an earlier start."
    ]

    # Another CPU (other flags) is tuned for itself: here the Xeon's figures, where fp32 stays.
    monkeypatch.setattr(tuner, "machine_identity", lambda device: ("Intel Xeon", "Intel Xeon|avx512f"))
    monkeypatch.setattr(tuner, "time_engines", forced({"openvino-fp32": 29.8, "openvino-bf16": 41.8}, calls))
    assert Classifier(copy.deepcopy(resnet18), labels, device="cpu").engine == "openvino-fp32"
    assert len(calls) == 3  # fp32 won: nothing to confirm


def test_a_burst_of_load_does_not_pass_for_a_faster_engine(cache, labels, resnet18, monkeypatch):
    """bf16 looks faster in the first timing only (the machine was busy while fp32 ran): fp32 stays."""
    rounds = iter(
        [{"openvino-fp32": 40.0, "openvino-bf16": 30.0}, {"openvino-fp32": 29.8, "openvino-bf16": 41.8}]
    )
    monkeypatch.setattr(engines, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(tuner, "time_engines", lambda runners, batch, **options: next(rounds))
    assert Classifier(copy.deepcopy(resnet18), labels, device="cpu").engine == "openvino-fp32"


def test_an_engine_that_changes_the_answers_is_never_picked(cache, labels, resnet18, monkeypatch, caplog):
    real = engines.OpenVINORunner.__call__

    def noisy_bf16(self, batch):  # bf16 that is fast but wrong
        outputs = real(self, batch)
        if self.config["INFERENCE_PRECISION_HINT"] != "bf16":
            return outputs
        logits, features = outputs
        return logits + torch.randn_like(logits) * logits.std(), features

    calls: list = []
    monkeypatch.setattr(engines, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(engines.OpenVINORunner, "__call__", noisy_bf16)
    monkeypatch.setattr(tuner, "time_engines", forced({"openvino-fp32": 17.0, "openvino-bf16": 7.0}, calls))
    with caplog.at_level(logging.INFO, logger="image_classifier"):
        chosen = Classifier(copy.deepcopy(resnet18), labels, device="cpu")
    assert chosen.engine == "openvino-fp32" and calls == []  # one candidate left: nothing to time
    assert chosen.engine_choice.drift["openvino-bf16"]["kept"] is False
    assert "openvino-bf16 changed the answers" in caplog.text


def test_when_no_engine_keeps_the_answers_the_reference_runs_and_that_is_remembered(
    cache, labels, resnet18, monkeypatch, caplog
):
    monkeypatch.setattr(tuner, "answer_drift", lambda reference, candidate: Drift(False, 1.0, 1.0))
    with caplog.at_level(logging.WARNING, logger="image_classifier"):
        first = Classifier(copy.deepcopy(resnet18), labels, device="cpu", name="resnet18")
    assert first.engine == "torch-fp32" and first.engine_choice.how == "fallback"
    assert warnings_in(caplog) == ["No engine kept resnet18's answers on the check photos: using torch-fp32."]
    caplog.clear()
    monkeypatch.setattr(tuner, "answer_drift", lambda *a: pytest.fail("checked again"))
    with caplog.at_level(logging.WARNING, logger="image_classifier"):
        again = Classifier(copy.deepcopy(resnet18), labels, device="cpu", name="resnet18")
    assert (again.engine, again.engine_choice.how, warnings_in(caplog)) == ("torch-fp32", "fallback", [])


def test_forced_engines_and_exact(cache, labels, resnet18):
    exact = Classifier(copy.deepcopy(resnet18), labels, device="cpu", precision="exact")
    assert exact.engine == "torch-fp32" and exact.engine_choice.how == "exact"
    forced_engine = Classifier(
        copy.deepcopy(resnet18), labels, device="cpu", engine="torch-fp32-channels-last"
    )
    assert forced_engine.engine_choice.how == "forced"
    assert same_answers(
        forced_engine.predict(CAT),
        Classifier(copy.deepcopy(resnet18), labels, device="cpu", engine="torch-fp32").predict(CAT),
    )
    with pytest.raises(engines.EngineUnavailable, match="'exact' always runs torch-fp32"):
        Classifier(copy.deepcopy(resnet18), labels, device="cpu", precision="exact", engine="openvino-fp32")
    with pytest.raises(engines.EngineUnavailable, match="Unknown engine"):
        Classifier(copy.deepcopy(resnet18), labels, device="cpu", engine="tensorrt")


# --- the verified cache ------------------------------------------------------------------------


def overwrite_middle(path):
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = os.urandom(4096)  # a disk error, a sync tool: same size, other bytes
    path.write_bytes(bytes(data))


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [overwrite_middle, truncate], ids=["overwritten", "truncated"])
def test_a_damaged_cache_is_rebuilt_with_one_log_line(cache, labels, resnet18, monkeypatch, caplog, damage):
    clean = Classifier(copy.deepcopy(resnet18), labels, device="cpu", engine="openvino-fp32").predict(CAT)
    (weights,) = cache.glob("openvino/**/*.bin")
    damage(weights)

    with caplog.at_level(logging.INFO, logger="image_classifier"):
        repaired = Classifier(copy.deepcopy(resnet18), labels, device="cpu", engine="openvino-fp32")
    assert repaired.engine == "openvino-fp32"
    assert same_answers(repaired.predict(CAT), clean)
    (warning,) = warnings_in(caplog)
    assert "is damaged" in warning and "converting the model again" in warning

    caplog.clear()
    monkeypatch.setattr(
        ov, "convert_model", lambda *a, **k: pytest.fail("converted again: the repair was lost")
    )
    with caplog.at_level(logging.INFO, logger="image_classifier"):
        after = Classifier(copy.deepcopy(resnet18), labels, device="cpu", engine="openvino-fp32")
    assert warnings_in(caplog) == [] and same_answers(after.predict(CAT), clean)
    (entry,) = (cache / "openvino").iterdir()
    model_cache.verify_entry(entry)


def test_a_cache_entry_without_its_manifest_is_rebuilt(cache, labels, resnet18, caplog):
    Classifier(copy.deepcopy(resnet18), labels, device="cpu", engine="openvino-fp32")
    (manifest,) = cache.glob("openvino/*/manifest.json")
    manifest.write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="image_classifier"):
        Classifier(copy.deepcopy(resnet18), labels, device="cpu", engine="openvino-fp32")
    assert any("no readable manifest" in w for w in warnings_in(caplog))
    model_cache.verify_entry(manifest.parent)


def test_a_read_only_cache_converts_in_memory_and_warns_once(cache, labels, resnet18, monkeypatch, caplog):
    cache.mkdir()
    cache.chmod(0o555)
    if os.access(cache, os.W_OK):  # running as root, whom permissions don't stop: the file system says no

        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(model_cache.tempfile, "mkdtemp", read_only)
        monkeypatch.setattr(model_cache.tempfile, "mkstemp", read_only)
    try:
        with caplog.at_level(logging.WARNING, logger="image_classifier"):
            first = Classifier(copy.deepcopy(resnet18), labels, device="cpu")
            second = Classifier(copy.deepcopy(resnet18), labels, device="cpu")
    finally:
        cache.chmod(0o755)
    assert first.engine.startswith("openvino") and second.predict(CAT) == first.predict(CAT)
    (warning,) = warnings_in(caplog)  # once, for both conversions and both decisions
    assert f"Can't write to the model cache {cache}" in warning
    assert not [path for path in cache.rglob("*") if path.is_file()]


def test_a_full_disk_leaves_no_half_written_entry(cache, labels, resnet18, monkeypatch, caplog):

    def disk_full(model, path, **options):
        with open(path, "w") as file:
            file.write("<?xml version='1.0'?><net")  # half-way through, the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ov, "save_model", disk_full)
    with caplog.at_level(logging.WARNING, logger="image_classifier"):
        classifier = Classifier(copy.deepcopy(resnet18), labels, device="cpu", engine="openvino-fp32")
        Classifier(copy.deepcopy(resnet18), labels, device="cpu", engine="openvino-fp32")
    assert classifier.engine == "openvino-fp32" and len(classifier.predict(CAT)) == 5
    (warning,) = warnings_in(caplog)
    assert "No space left on device" in warning
    assert list((cache / "openvino").iterdir()) == []


CONCURRENT_START = """
import json, os, sys, time
sys.path.insert(0, {root!r})
import torch, torchvision
from classifier import Classifier, load_labels
model = torchvision.models.resnet18()
model.load_state_dict(torch.load({weights!r}))
while not os.path.exists({go!r}):
    time.sleep(0.01)
classifier = Classifier(model, load_labels(), device="cpu")
print(json.dumps({{"engine": classifier.engine, "top": classifier.predict({cat!r})}}))
"""


def test_two_processes_starting_together_on_an_empty_cache(cache, resnet18, tmp_path):
    weights, go = tmp_path / "resnet18.pth", tmp_path / "go"
    torch.save(resnet18.state_dict(), weights)
    script = CONCURRENT_START.format(root=str(ROOT), weights=str(weights), go=str(go), cat=str(CAT))
    env = dict(os.environ, IMAGE_CLASSIFIER_CACHE=str(cache))
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    go.touch()  # both are imported and waiting: they convert and tune at the same time
    results = [process.communicate(timeout=600) for process in processes]
    for process, (_, err) in zip(processes, results, strict=True):
        assert process.returncode == 0, err.decode()
        assert b"damaged" not in err and b"Traceback" not in err
    answers = [json.loads(out) for out, _ in results]
    assert answers[0]["top"] == answers[1]["top"]
    (entry,) = (cache / "openvino").iterdir()  # one copy, complete, nothing half-written left over
    model_cache.verify_entry(entry)
    assert [path.name for path in cache.rglob(".incomplete-*")] == []
    assert len(list((cache / "decisions").glob("*.json"))) == 1


# --- non-finite results ------------------------------------------------------------------------


class NaNForBrightImages(torch.nn.Module):
    """A model whose logits hold `value` (NaN, +inf or -inf) in one class for bright images only."""

    def __init__(self, value: float = float("nan")) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3, 1000)
        self.value = value

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.linear(batch.mean(dim=(2, 3)))
        bright = batch.mean(dim=(1, 2, 3)) > 1.5  # a white photo, normalised: about 2
        poison = torch.zeros_like(logits)
        poison[:, 0] = self.value
        return torch.where(bright[:, None], logits + poison, logits)


def white_jpeg(tmp_path):
    from PIL import Image

    path = tmp_path / "white.jpg"
    Image.new("RGB", (300, 200), (255, 255, 255)).save(path)
    return path


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("precision", ["exact", "fast"])
def test_a_non_finite_result_is_a_plain_error_never_an_answer(
    cache, labels, tmp_path, caplog, value, precision
):
    classifier = Classifier(
        NaNForBrightImages(value), labels, device="cpu", precision=precision, name="nanny"
    )
    assert len(classifier.predict(CAT)) == 5  # ordinary photos still get answers
    with (
        caplog.at_level(logging.ERROR, logger="image_classifier"),
        pytest.raises(NonFiniteResultError) as error,
    ):
        classifier.predict(white_jpeg(tmp_path))
    assert str(error.value) == engines.NON_FINITE_MESSAGE
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert line.startswith(f"nanny on {classifier.engine} gave a non-finite result")
    with pytest.raises(NonFiniteResultError):
        classifier.predict_batch([CAT, white_jpeg(tmp_path)])


def test_a_model_that_is_nan_everywhere_falls_back_and_still_refuses(cache, labels, caplog):
    class AlwaysNaN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 1000)

        def forward(self, batch):
            return self.linear(batch.mean(dim=(2, 3))) * float("nan")

    with caplog.at_level(logging.WARNING, logger="image_classifier"):
        classifier = Classifier(AlwaysNaN(), labels, device="cpu")
    assert classifier.engine == "torch-fp32" and classifier.engine_choice.how == "fallback"
    assert any("not finite" in w for w in warnings_in(caplog))
    with pytest.raises(NonFiniteResultError):
        classifier.predict(CAT)
