"""The benchmark scripts run (tiny settings) so they cannot rot. Timings are never asserted here."""

import json
import subprocess
import sys

from conftest import ROOT


def run(script: str, out, *options: str) -> None:
    result = subprocess.run(
        [sys.executable, f"bench/{script}", "--quick", "--out", str(out), *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_latency_benchmark_runs(tmp_path):
    run("latency.py", tmp_path)
    results = json.loads((tmp_path / "latency.json").read_text())
    assert results["end_to_end"] and results["forward"] and results["fidelity"]["photos"] == 3
    fidelity = results["fidelity"]
    assert fidelity["exact"]["max_difference"] <= 1e-5  # exact is the reference
    assert fidelity["fast"]["same_top1"] == 3 and fidelity["fast"]["max_top5_difference"] <= 0.02
    assert set(results["start_up"]["seconds"]) == {
        "tuned, empty cache",
        "forced, empty cache",
        "tuned, cache filled",
        "forced, cache filled",
    }
    assert (tmp_path / "latency.png").stat().st_size > 10_000


def test_load_benchmark_runs(tmp_path):
    run("load.py", tmp_path)
    results = json.loads((tmp_path / "load.json").read_text())
    assert len(results) == 2 and all(r["requests"] == 4 and r["throughput"] > 0 for r in results.values())


def test_gpu_benchmark_runs(tmp_path):
    # No GPU in CI: --device cpu checks the script itself; the numbers mean something on CUDA only.
    run("gpu.py", tmp_path, "--device", "cpu")
    results = json.loads((tmp_path / "gpu.json").read_text())
    assert results["failed_sections"] == []
    assert results["many_photos"]["files"] == 24 and results["many_photos"]["ratio_to_reference"] > 0
    for photo in results["one_photo"].values():
        assert set(photo["ms"]) == {"seed", "fast", "fast, CPU decoder", "fast, GPU decoder", "exact"}
    assert results["concurrent"]["answers_unlike_a_lone_call"] == 0
    assert (
        set(results["tuner"]) == {"1"} and results["fidelity"]["same_top1"] == results["fidelity"]["photos"]
    )


def test_heatmap_benchmark_runs(tmp_path):
    run("heatmaps.py", tmp_path)
    results = json.loads((tmp_path / "heatmaps.json").read_text())
    (row,) = results["rows"]
    assert set(row["median_ms"]) == {"bars", "page", "explain"} and row["page_ratio"] > 0
    (fallback,) = results["fallback"]
    assert fallback["model"] == "mobilenet_v3_small" and fallback["method"] == "Grad-CAM"
    assert fallback["map_ms"] == fallback["median_ms"]["page"] - fallback["median_ms"]["bars"]
    methods = {row["method"]: row for row in results["methods"]}
    assert list(methods) == ["Grad-CAM", "Grad-CAM++", "Layer-CAM", "Score-CAM"]  # no CAM: not its head
    assert all(row["model"] == "mobilenet_v3_small" and row["median_ms"] > 0 for row in methods.values())
    assert min(results["localisation"]["CAM"].values()) >= 0.8


def test_heatmap_libraries_benchmark_runs(tmp_path):
    run("heatmap_libraries.py", tmp_path)
    (row,) = json.loads((tmp_path / "heatmap_libraries.json").read_text())["models"].values()
    assert row["median_ms"]["torchcam"] > 0 and row["median_ms"]["forward"] > 0


def test_upload_benchmark_runs(tmp_path):
    run("upload.py", tmp_path)
    results = json.loads((tmp_path / "upload.json").read_text())
    for pages in results["timings"].values():
        assert set(pages) == {"as it was", "resized", "no WebCodecs"}
        (plain,), (resized,), (canvas,) = pages["as it was"], pages["resized"], pages["no WebCodecs"]
        assert (
            plain["body_bytes"] > results["photo"]["bytes"] > max(resized["body_bytes"], canvas["body_bytes"])
        )
    (row,) = results["fidelity"]
    assert row["sent_bytes"] < row["original_bytes"]


def test_page_benchmark_runs(tmp_path):
    run("page.py", tmp_path, "--sides", "768", "--floor")
    results = json.loads((tmp_path / "page.json").read_text())
    for case, contenders in results["timings"].items():
        rows = [row for rows in contenders.values() for row in rows]
        assert rows and all(row["bars_ms"] > 0 for row in rows), case
        assert all(row["heatmap_ms"] >= row["bars_ms"] for row in rows if "heatmap_ms" in row), case
    assert {"plain", "Gradio, no work", "page, 768 px"} <= set(results["timings"]["loopback, 640×480"])
    assert any("heatmap_ms" in row for row in results["timings"]["loopback, 640×480"]["page, 768 px"])


def test_replace_benchmark_runs(tmp_path):
    """Also a canary: the page without its guard still runs the model twice (Gradio's twin "change"); the
    day it runs once, Gradio has fixed it and image_classifier/page/repeats.py can go."""
    run("replace.py", tmp_path)
    results = json.loads((tmp_path / "replace.json").read_text())
    assert [row["forward_passes"] for row in results["as shipped"]] == [1]
    assert [row["forward_passes"] for row in results["without the guard"]] == [2]
    assert all(row["heatmap_ms"] >= row["bars_ms"] > 0 for rows in results.values() for row in rows)


def test_live_benchmark_runs(tmp_path):
    run("live.py", tmp_path, "--parts", "1")
    results = json.loads((tmp_path / "live.json").read_text())
    assert set(results) >= {"plain", "all_cores", "live", "photo", "parts"}
    assert len(results["parts"]) == 5 and all(part["ratio"] > 0 for part in results["parts"].values())
    assert results["live"]["answered_per_s"] > 0 and results["live"]["rounds"][0]["step_ms"]["forward"] > 0
    assert results["photo"]["idle_ms"] and results["photo"]["with_two_streams_ms"]


def test_models_benchmark_runs(tmp_path):
    run("models.py", tmp_path)
    results = json.loads((tmp_path / "models.json").read_text())
    assert set(results["models"]) == {"shufflenet_v2_x0_5", "resnet18"}
    for row in results["models"].values():
        assert row["engine"].startswith("openvino") and row["ms_per_photo"] > 0 and row["estimate_mb"] > 0
    assert set(results["eviction"]) == {"budget_mb", "before_mb", "with_big_mb", "after_eviction_mb"}
    assert results["first_load_cost"]["during_load"]["requests"] >= 1


def test_sessions_benchmark_runs(tmp_path):
    run("sessions.py", tmp_path)
    report = json.loads((tmp_path / "sessions.json").read_text())
    assert report["visitors"] == 40 and report["ok"] == 40, report["problems"]
    assert report["rss_mb_peak"] >= report["rss_mb_before"] > 0


def test_soak_benchmark_runs(tmp_path):
    run("soak.py", tmp_path)
    report = json.loads((tmp_path / "soak.json").read_text())
    assert report["requests"] == 60 and sum(report["verdicts"].values()) == 60
    assert set(report["targets"]) and report["cache"]["by_quarter"]
