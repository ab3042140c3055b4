"""Fuzz the decoder: atheris (coverage-guided, libFuzzer) over `load_image` + preprocessing.

    python scripts/fuzz.py                          # the largest images, then 30 minutes of fuzzing
    python scripts/fuzz.py --seconds 60 --out DIR   # shorter; DIR keeps the corpus for the next run
    python scripts/fuzz.py --runs 3000 --seed 1 --no-largest   # the test suite's short, repeatable run
    python scripts/fuzz.py --largest                # only the largest accepted images of each kind
    python scripts/fuzz.py --replay FILE...         # run saved inputs through the target, say what each does

Every input goes through `load_image` and both `Classifier.preprocess` paths (tests/fuzzing.py's
`DecoderTarget`); only ImageError may come out, and no call may take over 2 s of CPU or 500 MB.

The fuzzer starts from tests/fuzzing.py's `seed_corpus()`, small real photos in every format the decoder
reads; PIL's and this project's Python code is instrumented for coverage. Findings are saved in DIR and the
run goes on: crashes/ (anything but ImageError came out, or a wrong result), slow/, memory/. A hang or a
crash inside C code stops libFuzzer, which saves the input in DIR/artifacts/. Small seeds can't grow into
50-megapixel images, so the largest images the decoder accepts, in the pixel formats that take most memory
(`largest_images()`), are checked on their own first, in a fresh process.
Prints the figures and writes DIR/fuzz.json; exit status 0 when nothing was found.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

HARD_TIMEOUT_S = 30
"""libFuzzer kills an input after this long (a hang); over 2 s of CPU is already a finding."""
RSS_LIMIT_MB = 4096
"""libFuzzer stops if the whole process grows past this (the 500 MB per input is measured per input)."""
MAX_LEN = 16384
"""Largest input libFuzzer makes, in bytes: a few times the largest seed."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=1800, help="how long to fuzz (default 1800)")
    parser.add_argument("--runs", type=int, help="stop after this many inputs instead")
    parser.add_argument("--seed", type=int, default=0, help="libFuzzer's random seed (0: a new one each run)")
    parser.add_argument("--out", type=Path, help="results and corpus folder (default: a new temp folder)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--largest", action="store_true", help="only the largest images, no fuzzing")
    which.add_argument("--no-largest", action="store_true", help="only fuzzing")
    which.add_argument("--replay", nargs="+", type=Path, metavar="FILE", help="run these inputs, no fuzzing")
    parser.add_argument("--json", action="store_true", help="--replay: one JSON line per input")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args, libfuzzer_args = parser.parse_known_args()
    if args.replay:
        return replay(args.replay, as_json=args.json)
    out = args.out or Path(tempfile.mkdtemp(prefix="fuzz-"))
    if args.worker:
        return fuzz_in_this_process(out, libfuzzer_args)
    from fuzzing import LIMIT_MB, LIMIT_SECONDS

    report: dict = {"limits": {"cpu_seconds": LIMIT_SECONDS, "memory_mb": LIMIT_MB}}
    if not args.no_largest:
        report["largest"] = check_largest(out)
    if not args.largest:
        report["fuzz"] = fuzz(out, args.seconds, args.runs, args.seed)
    report["clean"] = all(part["clean"] for part in (report.get("largest"), report.get("fuzz")) if part)
    (out / "fuzz.json").write_text(json.dumps(report, indent=2) + "\n")
    print_report(report, out)
    return 0 if report["clean"] else 1


def check_largest(out: Path) -> dict:
    """The largest accepted image of each heavy kind, in a fresh process (a clean memory baseline)."""
    from fuzzing import largest_images

    folder = out / "largest"
    folder.mkdir(parents=True, exist_ok=True)
    print("the largest accepted images...", flush=True)
    images = largest_images()
    for name, data in images.items():
        (folder / name).write_bytes(data)
    result = subprocess.run(
        [sys.executable, __file__, "--json", "--replay", *(str(folder / name) for name in images)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    for row in rows:
        row.update(name=Path(row["file"]).name, bytes=len(images[Path(row["file"]).name]))
    return {
        "images": rows,
        "slowest_cpu_seconds": max((row["cpu_seconds"] for row in rows), default=None),
        "most_memory_mb": max((row["peak_mb"] for row in rows), default=None),
        "errors": result.stderr[-2000:] if len(rows) != len(images) else "",
        "clean": len(rows) == len(images) and all(row["verdict"] == "ok" for row in rows),
    }


def fuzz(out: Path, seconds: int, runs: int | None, seed: int) -> dict:
    """Write the seeds, fuzz in a child process (libFuzzer exits the process it runs in), sum up."""
    from fuzzing import seed_corpus

    for folder in ("seeds", "corpus", "artifacts"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    (out / "stats.json").unlink(missing_ok=True)
    for name, data in seed_corpus().items():
        (out / "seeds" / name).write_bytes(data)
    budget = [f"-runs={runs}"] if runs else [f"-max_total_time={seconds}"]
    command = [
        sys.executable,
        __file__,
        "--worker",
        "--out",
        str(out),
        *budget,
        f"-seed={seed}",
        f"-timeout={HARD_TIMEOUT_S}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-max_len={MAX_LEN}",
        f"-artifact_prefix={out / 'artifacts'}/",
        "-print_final_stats=1",
        str(out / "corpus"),  # new inputs go to the first folder
        str(out / "seeds"),
    ]
    log = out / "libfuzzer.log"
    print(f"fuzzing for {f'{runs} inputs' if runs else f'{seconds} s'}; log: {log}", flush=True)
    started = time.monotonic()
    with open(log, "w") as stream:
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        status = subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT, env=env).returncode
    elapsed = time.monotonic() - started
    stats = json.loads((out / "stats.json").read_text()) if (out / "stats.json").exists() else {}
    return summarise(log.read_text(errors="replace"), stats, status, elapsed)


def summarise(log: str, stats: dict, status: int, elapsed: float) -> dict:
    """libFuzzer's own figures (its last status line) and the worker's."""
    lines = [line for line in log.splitlines() if re.match(r"#\d+\s", line) and " cov: " in line]
    last = lines[-1] if lines else ""

    def figure(name: str) -> int | None:
        found = re.search(rf"\b{name}: (\d+)", last)
        return int(found[1]) if found else None

    libfuzzer_error = next((line for line in log.splitlines() if "ERROR: libFuzzer" in line), None)
    artifacts = re.findall(r"Test unit written to (\S+)", log)
    findings = stats.get("findings", {})
    executed = re.search(r"stat::number_of_executed_units: (\d+)", log)  # stats.json may lag by a second
    executions = int(executed[1]) if executed else stats.get("executions", 0)
    seed = re.search(r"INFO: Seed: (\d+)", log)
    return {
        "executions": executions,
        "libfuzzer_seed": int(seed[1]) if seed else None,
        "seconds": round(elapsed, 1),
        "executions_per_second": round(executions / max(elapsed, 1e-9), 1),
        "coverage_edges": figure("cov"),
        "features": figure("ft"),
        "corpus_size": figure("corp"),
        "crashes": len(findings.get("crashes", [])),
        "slow": len(findings.get("slow", [])),
        "memory": len(findings.get("memory", [])),
        "findings": findings,
        "libfuzzer_error": libfuzzer_error,
        "libfuzzer_artifacts": artifacts,
        "libfuzzer_exit_status": status,
        "slowest": stats.get("slowest"),
        "most_memory": stats.get("most_memory"),
        "process_peak_rss_mb": stats.get("process_peak_rss_mb"),
        "clean": status == 0 and not libfuzzer_error and not any(findings.values()) and bool(stats),
    }


def print_report(report: dict, out: Path) -> None:
    limits = report["limits"]
    if "largest" in report:
        largest = report["largest"]
        print(f"largest accepted images (limits: {limits['cpu_seconds']:g} s CPU, {limits['memory_mb']} MB):")
        for row in largest["images"]:
            verdict, cpu, wall = (
                row.get("verdict", "no answer"),
                row.get("cpu_seconds", 0),
                row.get("wall_seconds", 0),
            )
            print(
                f"  {row['name']:<24} {verdict:<7} {cpu:5.2f} s CPU {wall:5.2f} s wall  "
                f"+{row.get('peak_mb', 0):4.0f} MB  {row.get('size', '')}"
            )
    if "fuzz" in report:
        fuzzed = report["fuzz"]
        slowest, memory = fuzzed["slowest"] or {}, fuzzed["most_memory"] or {}
        print(
            f"executions:        {fuzzed['executions']:,} in {fuzzed['seconds']:.0f} s "
            f"({fuzzed['executions_per_second']:.0f}/s), libFuzzer seed {fuzzed['libfuzzer_seed']}\n"
            f"coverage:          {fuzzed['coverage_edges']} edges, {fuzzed['features']} features, "
            f"corpus {fuzzed['corpus_size']} inputs\n"
            f"crashes:           {fuzzed['crashes']}\n"
            f"slow (> {limits['cpu_seconds']:g} s CPU): {fuzzed['slow']}\n"
            f"over {limits['memory_mb']} MB:     {fuzzed['memory']}\n"
            f"slowest input:     {slowest.get('cpu_seconds', 0):.3f} s CPU, "
            f"{slowest.get('wall_seconds', 0):.3f} s wall ({slowest.get('file')})\n"
            f"most memory:       +{memory.get('mb', 0):.0f} MB ({memory.get('file')})\n"
            f"process peak RSS:  {fuzzed['process_peak_rss_mb'] or 0:.0f} MB\n"
            f"libFuzzer:         exit {fuzzed['libfuzzer_exit_status']}"
            + (f", {fuzzed['libfuzzer_error']}" if fuzzed["libfuzzer_error"] else "")
        )
        for kind in ("crashes", "slow", "memory"):
            for finding in fuzzed["findings"].get(kind, []):
                print(f"  {kind}: {finding['file']}: {finding['what']}")
    print(f"{'clean' if report['clean'] else 'FOUND PROBLEMS'}; results: {out / 'fuzz.json'}")


def fuzz_in_this_process(out: Path, libfuzzer_args: list[str]) -> int:
    import atheris

    # Coverage comes from instrumented bytecode: PIL's parsers and plugins, and this project's own code.
    with atheris.instrument_imports(include=["PIL", "image_classifier", "classifier"]):
        from PIL import Image

        Image.init()  # imports every format plugin, instrumented
        import classifier  # noqa: F401
        import image_classifier.decoding  # noqa: F401
        import image_classifier.preprocessing  # noqa: F401
    import torch

    from fuzzing import DecoderTarget

    torch.set_num_threads(1)  # one input at a time, on a shared machine
    recorder = Recorder(out, DecoderTarget())
    atheris.Setup([sys.argv[0], *libfuzzer_args], recorder.test_one_input)
    atheris.Fuzz()  # exits the process when done
    return 0


class Recorder:
    """Runs each input, keeps the worst ones and every finding, and writes stats.json as it goes."""

    def __init__(self, out: Path, target) -> None:
        self.out, self.target = out, target
        self.executions = 0
        self.slowest: dict | None = None
        self.most_memory: dict | None = None
        self.process_peak_rss_mb = 0.0
        self.findings: dict[str, list[dict]] = {"crashes": [], "slow": [], "memory": []}
        self.seen: set[str] = set()
        self.flushed = 0.0

    def test_one_input(self, data: bytes) -> None:
        outcome = self.target(data)
        self.executions += 1
        self.process_peak_rss_mb = max(self.process_peak_rss_mb, outcome.process_peak_mb)
        changed = False
        if self.slowest is None or outcome.seconds > self.slowest["cpu_seconds"]:
            changed = True
            self.slowest = {
                "cpu_seconds": round(outcome.seconds, 4),
                "wall_seconds": round(outcome.wall_seconds, 4),
                "file": self._save("slowest.bin", data),
            }
        if self.most_memory is None or outcome.peak_mb > self.most_memory["mb"]:
            changed = True
            self.most_memory = {"mb": round(outcome.peak_mb, 1), "file": self._save("most-memory.bin", data)}
        if outcome.failure is not None:
            error = outcome.failure
            where = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
            what = f"{type(error).__name__}: {error}"[:300]
            key = f"{type(error).__name__} at {where.filename}:{where.lineno}" if where else what
            changed |= self._finding("crashes", key, what, data, "".join(traceback.format_exception(error)))
        if outcome.slow:
            changed |= self._finding("slow", None, f"{outcome.seconds:.2f} s CPU", data)
        if outcome.over_memory:
            changed |= self._finding("memory", None, f"+{outcome.peak_mb:.0f} MB", data)
        if changed or time.monotonic() - self.flushed > 1:
            self.flush()

    def _save(self, name: str, data: bytes) -> str:
        path = self.out / name
        path.write_bytes(data)
        return str(path)

    def _finding(self, kind: str, key: str | None, what: str, data: bytes, details: str = "") -> bool:
        digest = hashlib.sha1(data).hexdigest()[:16]
        key = key or digest
        if key in self.seen:  # the same crash again (same exception, same place), or the same input
            return False
        self.seen.add(key)
        folder = self.out / kind
        folder.mkdir(exist_ok=True)
        path = folder / f"{digest}.bin"
        path.write_bytes(data)
        if details:
            path.with_suffix(".txt").write_text(details)
        self.findings[kind].append({"file": str(path), "what": what, "key": key})
        return True

    def flush(self) -> None:
        stats = {
            "executions": self.executions,
            "slowest": self.slowest,
            "most_memory": self.most_memory,
            "process_peak_rss_mb": round(self.process_peak_rss_mb, 1),
            "findings": self.findings,
        }
        temporary = self.out / "stats.json.tmp"
        temporary.write_text(json.dumps(stats, indent=2))
        os.replace(temporary, self.out / "stats.json")
        self.flushed = time.monotonic()


def replay(paths: list[Path], as_json: bool = False) -> int:
    import torch
    from PIL import Image

    from fuzzing import DecoderTarget

    torch.set_num_threads(1)
    target = DecoderTarget()
    bad = 0
    for path in paths:
        data = path.read_bytes()
        outcome = target(data)
        verdict = (
            "crash"
            if outcome.failure
            else "slow"
            if outcome.slow
            else "memory"
            if outcome.over_memory
            else "ok"
        )
        bad += verdict != "ok"
        try:
            with Image.open(path) as image:
                size = f"{image.format} {image.mode} {image.width}×{image.height}"
        except Exception:  # only a description
            size = "not an image"
        row = {
            "file": str(path),
            "verdict": verdict,
            "cpu_seconds": round(outcome.seconds, 3),
            "wall_seconds": round(outcome.wall_seconds, 3),
            "peak_mb": round(outcome.peak_mb, 1),
            "size": size,
            "failure": repr(outcome.failure) if outcome.failure else None,
        }
        if as_json:
            print(json.dumps(row), flush=True)
        else:
            print(
                f"{path}: {verdict}: {size}, {row['cpu_seconds']:.3f} s CPU, "
                f"{row['wall_seconds']:.3f} s wall, +{row['peak_mb']:.0f} MB"
            )
            if outcome.failure:
                traceback.print_exception(outcome.failure)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
