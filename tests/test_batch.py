"""Many images into one table: file discovery, the pipelined runner, CSV/JSONL/Parquet, resume, the CLI."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from image_classifier import batch
from image_classifier.batch import Row

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BROKEN = {  # file -> the start of its row's error
    "a/truncated.jpg": "The image file is incomplete",
    "a/b/garbage.png": "This file is not an image we can read",
    "c/empty.jpg": "The file is empty",
}


def make_tree(root: Path) -> list[str]:
    """Nested folders of JPEGs and PNGs, a few broken files, a text file and a symlink loop.

    Returns the image files a walk must find (broken ones included), as paths under `root`.
    """
    rng = np.random.default_rng(0)
    images = []
    for i, name in enumerate(["top.jpg", "a/one.png", "a/b/two.JPG", "a/b/c/three.jpeg", "c/four.png"]):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        photo = Image.open(sorted(EXAMPLES.glob("*.jpg"))[i % 3]).convert("RGB")
        noise = rng.integers(0, 40, (*photo.size[::-1], 3), dtype=np.uint8)  # each file its own pixels
        Image.fromarray(np.asarray(photo) // 2 + noise).save(path)
        images.append(str(path))
    jpeg = (EXAMPLES / "cat.jpg").read_bytes()
    (root / "a/truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "a/b/garbage.png").write_bytes(b"\x89PNG not really")
    (root / "c/empty.jpg").write_bytes(b"")
    (root / "c/notes.txt").write_text("not a photo, and not named like one")
    os.symlink("../..", root / "a/b/loop")  # a/b/loop -> root: walking it again would never end
    images += [str(root / name) for name in BROKEN]
    return images


@pytest.fixture
def tree(tmp_path) -> tuple[Path, list[str]]:
    root = tmp_path / "photos"
    return root, make_tree(root)


def by_image(rows: list[Row]) -> dict[str, Row]:
    assert len({row.image for row in rows}) == len(rows), "an image has more than one row"
    return {row.image: row for row in rows}


def assert_same_answers(ours: dict[str, float], expected: dict[str, float]) -> None:
    assert list(ours) == list(expected)
    assert all(math.isclose(ours[k], expected[k], rel_tol=1e-4, abs_tol=1e-6) for k in expected)


# --- finding files -----------------------------------------------------------------------------


def test_find_images_walks_folders_expands_globs_and_keeps_named_files(tree):
    root, images = tree
    assert sorted(batch.find_images([root])) == sorted(images)  # no text file, the loop walked once
    assert batch.find_images([root / "c" / "notes.txt"]) == [str(root / "c" / "notes.txt")]  # named: tried
    pngs = batch.find_images([f"{root}/**/*.png"])
    assert sorted(pngs) == sorted(str(p) for p in root.rglob("*.png") if "loop" not in str(p))
    # Each file once, whichever way it was named; a missing path stays, for its row to say so.
    again = batch.find_images([root / "top.jpg", root, f"{root}/*.jpg", root / "missing.jpg"])
    assert len(again) == len(images) + 1 and again[0] == str(root / "top.jpg")
    assert again[-1] == str(root / "missing.jpg")


# --- the runner --------------------------------------------------------------------------------


def test_runner_matches_single_predict_and_reports_broken_files(random_densenet, tree):
    _, images = tree
    rows = list(batch.classify_images(random_densenet, images, batch_size=3, workers=2))
    assert [row.image for row in rows] == images  # in order, one row each
    for row in rows:
        name = os.path.relpath(row.image, tree[0])
        if name in BROKEN:
            assert row.predictions == {} and row.error.startswith(BROKEN[name]), row
        else:
            assert row.error is None
            assert_same_answers(row.predictions, random_densenet.predict(row.image))


def test_runner_reads_ahead_a_bounded_window(random_densenet):
    """Memory stays flat because at most about two batches are decoded ahead of the engine."""
    taken = 0

    def endless():
        nonlocal taken
        while True:
            taken += 1
            yield str(EXAMPLES / "cat.jpg")

    rows = batch.classify_images(random_densenet, endless(), batch_size=4, workers=2)
    for _ in range(10):
        next(rows)
    rows.close()
    assert taken <= 10 + 4 + 2 * 4 + 2


class RefusesOne:
    """A classifier whose postprocess refuses one image's result, as a non-finite check does."""

    def __init__(self, inner, refuse: int) -> None:
        self.inner, self.labels, self.calls, self.refuse = inner, inner.labels, 0, refuse

    def preprocess(self, image):
        return self.inner.preprocess(image)

    def forward(self, tensors):
        return self.inner.forward(tensors)

    def postprocess(self, probabilities, top_k):
        self.calls += 1
        if self.calls == self.refuse:
            raise batch.ImageError("The model's answer for this image was not a number.")
        return self.inner.postprocess(probabilities, top_k)


def test_an_image_error_from_the_prediction_becomes_that_rows_error(random_densenet):
    images = [str(p) for p in sorted(EXAMPLES.glob("*.jpg"))]
    rows = list(batch.classify_images(RefusesOne(random_densenet, refuse=2), images, batch_size=3))
    assert [row.error for row in rows] == [None, "The model's answer for this image was not a number.", None]
    assert_same_answers(rows[2].predictions, random_densenet.predict(images[2]))


# --- output files and resume -------------------------------------------------------------------


def read_directly(path: Path) -> list[dict]:
    """The table as another program reads it, by the README's description and none of this project's
    code: the csv module, json, pyarrow. One {"image", "predictions", "error"} per row, in order."""
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as file:
            return [json.loads(line) for line in file]
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as file:
            records = list(csv.DictReader(file))
    else:
        records = pq.read_table(path).to_pylist()
    rows = []
    for record in records:
        ranks = range(1, sum(name.startswith("label_") for name in record) + 1)
        pairs = [(record[f"label_{k}"], record[f"probability_{k}"]) for k in ranks]
        predictions = {label: float(p) for label, p in pairs if label not in (None, "")}
        rows.append({"image": record["image"], "predictions": predictions, "error": record["error"] or None})
    return rows


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_output_round_trip(random_densenet, tree, tmp_path, suffix):
    root, images = tree
    output = tmp_path / f"results{suffix}"
    summary = batch.run(random_densenet, [root], output, top_k=3, batch_size=4)
    assert (summary.classified, summary.failed) == (len(images) - len(BROKEN), len(BROKEN))
    assert str(summary) == f"5 classified, 3 failed -> {output}"
    expected = list(batch.classify_images(random_densenet, batch.find_images([root]), top_k=3, batch_size=4))
    assert batch.read_rows(output) == expected  # our own reader: same rows, same order, exact floats
    rows = read_directly(output)
    assert [row["image"] for row in rows] == [row.image for row in expected]
    for row in rows:
        name = os.path.relpath(row["image"], root)
        if name in BROKEN:
            assert row["error"].startswith(BROKEN[name]) and row["predictions"] == {}
        else:
            assert row["error"] is None
            assert_same_answers(row["predictions"], random_densenet.predict(row["image"], top_k=3))
    if suffix == ".csv":
        with open(output, newline="") as file:
            assert next(csv.reader(file)) == [
                "image",
                *("label_1", "probability_1", "label_2", "probability_2", "label_3", "probability_3"),
                "error",
            ]
    if suffix == ".parquet":
        assert pq.read_schema(output).names == batch.columns(3)
        assert not batch._journal(output).exists()


class Interrupted(Exception):
    pass


class DiesAfter:
    """A classifier that stops the run (like Ctrl-C or a killed process) at its n-th forward pass."""

    def __init__(self, inner, passes: int) -> None:
        self.inner, self.labels, self.passes = inner, inner.labels, passes

    def preprocess(self, image):
        return self.inner.preprocess(image)

    def forward(self, tensors):
        self.passes -= 1
        if self.passes == 0:
            raise Interrupted
        return self.inner.forward(tensors)

    def postprocess(self, probabilities, top_k):
        return self.inner.postprocess(probabilities, top_k)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_resume_after_an_interrupted_run_gives_the_same_output(random_densenet, tree, tmp_path, suffix):
    root, images = tree
    complete = tmp_path / f"complete{suffix}"
    batch.run(random_densenet, [root], complete, batch_size=2)

    output = tmp_path / f"results{suffix}"
    with pytest.raises(Interrupted):
        batch.run(DiesAfter(random_densenet, passes=3), [root], output, batch_size=2)
    written = batch._journal(output) if suffix == ".parquet" else output
    kept = batch.read_rows(output)
    assert 0 < len(kept) < len(images)
    with open(written, "a") as file:  # the process died half-way through a line
        file.write(f"{images[-1]},tabby,0.")

    summary = batch.run(random_densenet, [root], output, batch_size=2, resume=True)
    assert (summary.classified, summary.failed, summary.earlier) == (5, 3, len(kept))
    final = batch.read_rows(output)
    by_image(final)  # no duplicates
    assert sorted(final, key=lambda r: r.image) == sorted(batch.read_rows(complete), key=lambda r: r.image)


def test_resume_refuses_a_different_top_k(random_densenet, tmp_path):
    output = tmp_path / "results.csv"
    batch.run(random_densenet, [EXAMPLES / "cat.jpg"], output, top_k=3)
    with pytest.raises(ValueError, match="resume with --top-k 3"):
        batch.run(random_densenet, [EXAMPLES], output, top_k=5, resume=True)


def test_unknown_output_suffix_is_refused():
    with pytest.raises(ValueError, match="use .csv, .jsonl or .parquet"):
        batch.output_format("results.xlsx")


# --- the page's Many photos tab ----------------------------------------------------------------


def test_classify_uploads_gives_table_rows_and_a_csv(random_densenet, tmp_path):
    bad = tmp_path / "holiday.jpg"
    bad.write_text("not a photo")
    photos = [str(p) for p in sorted(EXAMPLES.glob("*.jpg"))] + [str(bad)]
    seen = []
    table, csv_path = batch.classify_uploads(random_densenet, photos, progress=lambda *p: seen.append(p))
    assert len(table) == 4 and seen[-1] == (4, 4)
    top = random_densenet.predict(photos[0])
    label, probability = next(iter(top.items()))
    assert table[0][:3] == ["cat.jpg", label, f"{probability:.1%}"] and table[0][4] == ""
    assert table[3][0] == "holiday.jpg" and table[3][4].startswith("This file is not an image we can read")
    rows = read_directly(Path(csv_path))
    assert [row["image"] for row in rows] == ["cat.jpg", "coffee.jpg", "rocket.jpg", "holiday.jpg"]
    assert rows[0]["error"] is None
    assert_same_answers(rows[0]["predictions"], top)
    assert rows[3]["predictions"] == {} and rows[3]["error"] == table[3][4]
    assert Path(csv_path).name == "many-photos.csv"
    with pytest.raises(ValueError, match="at most 2 photos"):
        batch.classify_uploads(random_densenet, photos, max_files=2)


# --- the command line --------------------------------------------------------------------------


def test_cli_writes_the_table_and_exits_1_with_a_summary(densenet_weights, random_densenet, tree, tmp_path):
    root, images = tree
    output = tmp_path / "results.jsonl"
    result = subprocess.run(
        [sys.executable, "classifier.py", root, "--weights", densenet_weights, "--output", output],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == f"5 classified, 3 failed -> {output}"
    assert "Traceback" not in result.stderr and "img/s" not in result.stderr  # no bar: not a terminal
    rows = {row["image"]: row for row in read_directly(output)}  # json, line by line
    assert sorted(rows) == sorted(images)
    for image, row in rows.items():
        name = os.path.relpath(image, root)
        if name in BROKEN:
            assert row["error"].startswith(BROKEN[name])
        else:
            assert row["error"] is None
            assert_same_answers(row["predictions"], random_densenet.predict(image))


def test_cli_progress_shows_a_bar_where_stderr_is_no_terminal(
    random_densenet, tree, tmp_path, monkeypatch, capsys
):
    """`--progress`, as the README says: the bar (images, images/s) even into a file or a pipe. In process,
    with the session's model (the command line's loading is tested above)."""
    import classifier

    root, images = tree
    monkeypatch.setattr(classifier, "load_classifier", lambda *args, **kwargs: random_densenet)
    output = tmp_path / "results.csv"
    assert classifier.main([str(root), "--output", str(output), "--progress"]) == 1
    err = capsys.readouterr().err
    assert f"{len(images)}/{len(images)}" in err and "img/s" in err and "100%" in err
    assert err.splitlines()[-1] == f"5 classified, 3 failed -> {output}"
    assert classifier.main([str(root), "--output", str(tmp_path / "again.csv")]) == 1
    assert "img/s" not in capsys.readouterr().err  # without the flag, no bar: stderr is not a terminal


def test_batch_benchmark_runs(tmp_path):
    """bench/batch.py with tiny settings, so the script can't rot (timings are never asserted)."""
    result = subprocess.run(
        [sys.executable, "bench/batch.py", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads((tmp_path / "batch.json").read_text())
    assert results["runner"] > 0 and results["loop"] > 0 and set(results["rss_mb"]) == {"50", "200"}


class NaNForWhite(torch.nn.Module):
    """Logits that are NaN for a white image only (bright after normalisation), finite for photos."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3, 1000)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.linear(batch.mean(dim=(2, 3)))
        white = batch.mean(dim=(1, 2, 3)) > 1.5
        return torch.where(white[:, None], float("nan"), logits)


def strict_json(line: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_nan_result_is_that_rows_error_and_the_output_stays_valid(labels, tmp_path, suffix):
    from classifier import Classifier
    from image_classifier.engines import NON_FINITE_MESSAGE

    classifier = Classifier(NaNForWhite(), labels, device="cpu", precision="exact")
    white = tmp_path / "white.png"
    Image.new("RGB", (64, 64), (255, 255, 255)).save(white)
    photos = [str(p) for p in sorted(EXAMPLES.glob("*.jpg"))]
    images = [photos[0], str(white), photos[1], photos[2]]
    rows = list(batch.classify_images(classifier, images, batch_size=4))  # one forward pass for all four
    assert [row.error for row in rows] == [None, NON_FINITE_MESSAGE, None, None]
    for row in (rows[0], rows[2], rows[3]):
        assert_same_answers(row.predictions, classifier.predict(row.image))

    output = tmp_path / f"results{suffix}"
    summary = batch.run(classifier, images, output, batch_size=4)
    assert (summary.classified, summary.failed) == (3, 1)
    if suffix == ".jsonl":
        records = [strict_json(line) for line in output.read_text().splitlines()]
        assert [record["error"] for record in records] == [None, NON_FINITE_MESSAGE, None, None]
    else:
        with open(output, newline="") as file:
            probabilities = [
                v for r in csv.DictReader(file) for k, v in r.items() if k.startswith("probability")
            ]
        assert len(probabilities) == 4 * 5 and all(p == "" or math.isfinite(float(p)) for p in probabilities)
    assert batch.read_rows(output) == rows
