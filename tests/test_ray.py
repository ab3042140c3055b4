"""The batch job on a local Ray gives the same rows as the local runner.

Ray is optional: without it these tests skip, except in CI (CI=true), where .ci/run installs it.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

from test_batch import BROKEN, ROOT, by_image, make_tree

from conftest import optional_import
from image_classifier import batch

optional_import("ray", "pip install -r requirements-ray.txt")


def run_cli(*args, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "classifier.py", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,  # a Ray job that starves its own reads hangs without a word: fail instead
    )


def test_ray_gives_the_same_rows_as_the_local_run(densenet_weights, tmp_path):
    root = tmp_path / "photos"
    images = make_tree(root)
    local, on_ray = tmp_path / "local.csv", tmp_path / "ray.csv"
    assert run_cli(root, "--weights", densenet_weights, "--output", local, timeout=300).returncode == 1

    result = run_cli(root, "--weights", densenet_weights, "--output", on_ray, "--ray", timeout=300)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines()[-1] == f"5 classified, 3 failed -> {on_ray}"
    # Quiet: no token-auth warning, no Ray Data execution log, no deprecation warnings.
    assert len(result.stderr.splitlines()) == 1, result.stderr

    expected, rows = by_image(batch.read_rows(local)), by_image(batch.read_rows(on_ray))
    assert sorted(rows) == sorted(expected) == sorted(images)
    for image, row in rows.items():
        assert row.error == expected[image].error
        assert list(row.predictions) == list(expected[image].predictions)
        assert all(
            math.isclose(p, expected[image].predictions[k], abs_tol=1e-6) for k, p in row.predictions.items()
        )
    assert {os.path.relpath(i, root) for i, row in rows.items() if row.error} == set(BROKEN)

    # --resume on Ray: nothing left to do, the same rows, no duplicates.
    again = run_cli(root, "--weights", densenet_weights, "--output", on_ray, "--ray", "--resume", timeout=300)
    assert again.returncode == 1, again.stderr
    assert by_image(batch.read_rows(on_ray)) == rows
