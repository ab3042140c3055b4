"""Fuzzing the decoder (scripts/fuzz.py, tests/fuzzing.py): the seeds cover every format, a short fuzz run
and the largest accepted images stay within the limits, and what the fuzzing found stays fixed."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classifier import ImageError, load_image
from conftest import ROOT
from fuzzing import LIMIT_MB, DecoderTarget, PeakMemory, largest_images, seed_corpus
from image_classifier.decoding import _to_rgb

SEEDS = seed_corpus()


@pytest.fixture(scope="module")
def target() -> DecoderTarget:
    return DecoderTarget()


def fuzz_script(*options: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "scripts/fuzz.py", *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


def test_seeds_cover_every_format_and_flavour_the_decoder_reads():
    images = {name: opened(data) for name, data in SEEDS.items()}
    assert {image.format for image in images.values()} == {"JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"}
    jpegs = [image for image in images.values() if image.format == "JPEG"]
    assert any(image.info.get("progressive") for image in jpegs)
    assert any(image.mode == "CMYK" for image in jpegs)
    pngs = {name: image for name, image in images.items() if image.format == "PNG"}
    assert {"RGB", "RGBA", "I;16", "P", "1", "LA"} <= {image.mode for image in pngs.values()}
    assert SEEDS["rgb16.png"][24:26] == b"\x10\x02"  # IHDR: 16 bits a sample, RGB
    assert SEEDS["interlaced.png"][28] == 1  # IHDR: Adam7
    assert "transparency" in pngs["palette-transparent.png"].info
    assert any(getattr(image, "n_frames", 1) > 1 for image in images.values() if image.format == "GIF")
    with_exif = {image.format for image in images.values() if image.getexif()}
    without_exif = {image.format for image in images.values() if not image.getexif()}
    assert {"JPEG", "PNG", "WEBP", "TIFF"} <= with_exif and {"JPEG", "PNG", "GIF", "BMP"} <= without_exif
    assert max(map(len, SEEDS.values())) < 10_000  # small, so the fuzzer runs fast


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_seed_decodes_cleanly(target, name):
    outcome = target(SEEDS[name])
    assert outcome.failure is None, outcome.failure
    image = load_image(SEEDS[name])
    assert image.mode == "RGB" and max(image.size) == 40  # upright and whole: nothing was refused


def test_the_target_reports_anything_but_image_error():
    target = DecoderTarget()
    target.steps["refuses"] = lambda data: load_image(b"")  # ImageError: expected
    assert target(SEEDS["still.gif"]).failure is None
    target.steps["breaks"] = lambda data: {}["missing"]
    assert isinstance(target(SEEDS["still.gif"]).failure, KeyError)


def test_peak_memory_sees_a_short_lived_allocation():
    memory = PeakMemory()
    block = np.ones(100 * 2**20, dtype=np.uint8)  # 100 MB, touched
    del block
    assert 90 <= memory.peak_mb() <= 150


def test_a_short_fuzz_run_finds_nothing(tmp_path):
    """libFuzzer with a fixed seed and number of inputs: the same inputs every time."""
    if sys.platform != "linux":  # requirements-dev.txt installs it on Linux, where its wheels are
        pytest.skip("atheris has Linux wheels only")
    import atheris  # noqa: F401  (required on Linux: missing, it fails here rather than skipping)

    result = fuzz_script("--runs", "1500", "--seed", "1", "--no-largest", "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "fuzz.json").read_text())["fuzz"]
    assert report["executions"] == 1500 and report["coverage_edges"] > 500, report
    assert (report["crashes"], report["slow"], report["memory"], report["libfuzzer_error"]) == (0, 0, 0, None)
    assert len(list((tmp_path / "corpus").iterdir())) > 0  # it found new paths through PIL's parsers


def test_the_largest_accepted_images_decode_within_500_mb(tmp_path):
    """At the pixel limit, in the pixel formats that take most memory: a transparent PNG took 760 MB, a
    WebP 930 MB and a 16-bit gray PNG 525 MB before decoding.py was fixed."""
    result = fuzz_script("--largest", "--out", str(tmp_path))
    report = json.loads((tmp_path / "fuzz.json").read_text())["largest"]
    rows = {row["name"]: row for row in report["images"]}
    assert set(rows) == set(largest_images()), result.stdout + result.stderr
    over = {name: row for name, row in rows.items() if row["verdict"] != "ok" or row["peak_mb"] >= LIMIT_MB}
    assert not over and result.returncode == 0, (over, result.stdout)
    assert all(row["peak_mb"] > 100 for row in rows.values())  # they were decoded, not refused


# --- what the fuzzing found ------------------------------------------------------------------------

FINDINGS = sorted((Path(__file__).parent / "fuzz_findings").glob("*.bin"))


@pytest.mark.parametrize("finding", FINDINGS, ids=[path.stem for path in FINDINGS])
def test_inputs_the_fuzzer_found_get_image_error_or_decode(target, finding):
    """Found by the 30-minute run (python scripts/fuzz.py): a BigTIFF whose tag offset is past 2**63 raised
    OverflowError from Image.open; a WebP whose EXIF holds a value of the wrong type raised struct.error from
    ImageOps.exif_transpose (gone since the EXIF is read once, without it); a 1 KB BMP that says it is
    1048616×27 pixels took 2.4 s of CPU under the fuzzer's instrumentation (under 1 s without). Only
    ImageError may come out, within the time and memory limits."""
    outcome = target(finding.read_bytes())
    assert outcome.failure is None and not outcome.slow and not outcome.over_memory, outcome


def encode(image: Image.Image, format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


def test_webp_over_its_own_pixel_limit_is_refused_from_the_header():
    """Pillow decodes WebP at 16 bytes a pixel: 7000×7000 took 740 MB. It is refused before decoding."""
    data = encode(Image.new("RGBA", (7000, 7000)), "WEBP", lossless=True)
    assert len(data) < 10_000
    memory = PeakMemory()
    with pytest.raises(ImageError, match=r"7000×7000 pixels; the limit for WebP images is 31 megapixels"):
        load_image(data)
    assert memory.peak_mb() < 50
    assert load_image(encode(Image.new("RGB", (5000, 5000)), "WEBP")).size == (5000, 5000)


def test_progressive_cmyk_jpeg_is_limited_at_full_size_only(target):
    """libjpeg keeps a progressive JPEG's coefficients (8 bytes a pixel for CMYK) until the last scan; with
    the full-size image and its RGB copy, 7000×7000 needs 590 MB. Reduced-scale decoding (what the
    classifier does) needs the coefficients only, and is allowed."""
    data = encode(Image.new("CMYK", (7000, 7000)), "JPEG", progressive=True)
    with pytest.raises(ImageError, match="the limit for progressive JPEG images is 31 megapixels"):
        load_image(data)
    preprocess = target.steps["preprocess-fast"]
    memory = PeakMemory()
    assert tuple(preprocess(data).shape) == (3, 224, 224)
    assert memory.peak_mb() < LIMIT_MB


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA", "RGBa", "P"])
def test_transparency_is_composited_on_white_as_before(mode):
    """The memory-lean paste gives exactly what alpha-compositing RGBA copies gave."""
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (48, 64, 4), dtype=np.uint8), "RGBA")
    image = rgba.quantize(64) if mode == "P" else rgba.convert(mode)
    if mode == "P":
        image.info["transparency"] = 5
    reference = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    assert np.array_equal(np.asarray(_to_rgb(image)), np.asarray(reference.convert("RGB")))


def test_16_bit_gray_is_scaled_as_before_in_half_the_memory():
    values = np.random.default_rng(0).integers(0, 65536, (48, 64), dtype=np.uint16)
    values[0, :6] = [0, 1, 256, 257, 65534, 65535]
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    expected = np.trunc(values * (255 / 65535)).astype(np.uint8)
    assert np.array_equal(np.asarray(_to_rgb(image))[..., 0], expected)
    small = Image.fromarray(np.array([[0, 10, 200, 255]], dtype=np.uint16))  # 8-bit values in 16 bits
    assert np.asarray(_to_rgb(small))[0, :, 0].tolist() == [0, 10, 200, 255]
