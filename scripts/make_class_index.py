"""Regenerate imagenet_class_index.json from the ImageNet synset lists that timm's wheel ships.

    python scripts/make_class_index.py                 # downloads timm's wheel with pip (no install)
    python scripts/make_class_index.py --wheel timm-1.0.31-py3-none-any.whl

The output is the standard class index: {"0": ["n01440764", "tench"], ...}, classes in sorted WordNet-id
order (the order torchvision's models use), each named by its synset's first lemma with spaces as
underscores. tests/test_labels.py checks the file against torchvision's own category names.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SYNSETS = "timm/data/_info/imagenet_synsets.txt"
LEMMAS = "timm/data/_info/imagenet_synset_to_lemma.txt"
OUTPUT = Path(__file__).resolve().parent.parent / "imagenet_class_index.json"


def class_index(synsets: str, lemmas: str) -> dict[str, list[str]]:
    """{"i": [wnid, name]} from timm's synset list and its synset -> lemmas table."""
    first_lemma = {}
    for line in lemmas.splitlines():
        wnid, names = line.split("\t", 1)
        first_lemma[wnid] = names.split(", ")[0].replace(" ", "_")
    wnids = synsets.split()
    if len(wnids) != 1000 or wnids != sorted(wnids):
        raise ValueError("expected the 1000 ImageNet-1k synsets in sorted order")
    return {str(i): [wnid, first_lemma[wnid]] for i, wnid in enumerate(wnids)}


def download_timm_wheel(folder: str) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", folder, "timm"],
        check=True,
    )
    return next(Path(folder).glob("timm-*.whl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="a timm wheel (default: download the latest)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        wheel = args.wheel or download_timm_wheel(folder)
        with zipfile.ZipFile(wheel) as z:
            index = class_index(z.read(SYNSETS).decode(), z.read(LEMMAS).decode())
    text = "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in index.items()) + "\n}\n"
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {len(index)} classes to {args.output} (from {Path(wheel).name})")


if __name__ == "__main__":
    main()
