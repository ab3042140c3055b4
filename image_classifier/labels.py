"""The 1,000 ImageNet display labels, from the class index file beside app.py."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

DEFAULT_LABELS_PATH = Path(__file__).resolve().parent.parent / "imagenet_class_index.json"

# ImageNet gives two pairs of classes the same name; these WordNet ids tell them apart.
_DISAMBIGUATIONS = {
    "n02012849": "crane (bird)",
    "n03126707": "crane (machine)",
    "n03710637": "maillot (swimsuit)",
    "n03710721": "maillot (tank suit)",
}


def load_labels(path: str | os.PathLike = DEFAULT_LABELS_PATH) -> list[str]:
    """The display labels of an ImageNet class index file, in class-index order.

    The file maps "0".."999" to [WordNet id, name]. Underscores become spaces, and names that occur
    more than once are qualified, so that a label -> probability dict never merges two classes.
    """
    with open(path, encoding="utf-8") as f:
        index = json.load(f)
    entries = [index[str(i)] for i in range(len(index))]
    names = [name.replace("_", " ") for _, name in entries]
    counts = Counter(names)
    return [
        _DISAMBIGUATIONS.get(wnid, f"{name} ({wnid})") if counts[name] > 1 else name
        for (wnid, _), name in zip(entries, names, strict=True)
    ]
