import json
import subprocess
import sys
import zipfile

from torchvision.models import DenseNet121_Weights

from classifier import DEFAULT_LABELS_PATH, load_labels

TORCHVISION_CATEGORIES = DenseNet121_Weights.IMAGENET1K_V1.meta["categories"]


def test_class_index_is_the_standard_1000_classes_in_torchvision_order():
    index = json.loads(DEFAULT_LABELS_PATH.read_text())
    assert list(index) == [str(i) for i in range(1000)]
    wnids = [index[str(i)][0] for i in range(1000)]
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000
    assert index["0"] == ["n01440764", "tench"] and index["999"] == ["n15075141", "toilet_tissue"]


def test_class_index_agrees_with_torchvision_names():
    index = json.loads(DEFAULT_LABELS_PATH.read_text())
    names = [index[str(i)][1].replace("_", " ") for i in range(1000)]
    differing = {
        i: (ours, theirs)
        for i, (ours, theirs) in enumerate(zip(names, TORCHVISION_CATEGORIES, strict=True))
        if ours != theirs
    }
    # torchvision itself renames two of ImageNet's duplicate names; everything else is identical.
    assert differing == {134: ("crane", "crane bird"), 639: ("maillot", "maillot tank suit")}


def test_display_labels_are_readable_and_unique():
    labels = load_labels()
    assert len(labels) == 1000 and len(set(labels)) == 1000
    assert not [label for label in labels if "_" in label]
    assert labels[134] == "crane (bird)" and labels[517] == "crane (machine)"
    assert labels[638] == "maillot (swimsuit)" and labels[639] == "maillot (tank suit)"
    assert labels[3] == "tiger shark" and labels[281] == "tabby"


def test_unknown_duplicates_are_told_apart_by_wordnet_id(tmp_path):
    path = tmp_path / "index.json"
    path.write_text(json.dumps({"0": ["n1", "thing"], "1": ["n2", "thing"], "2": ["n3", "other_thing"]}))
    assert load_labels(path) == ["thing (n1)", "thing (n2)", "other thing"]


def _fake_timm_wheel(path, index):
    """A zip laid out like timm's wheel, with synset tables rebuilt from `index` (plus synonyms)."""
    synsets = "\n".join(index[str(i)][0] for i in range(len(index))) + "\n"
    lemmas = "".join(f"{wnid}\t{name.replace('_', ' ')}, a synonym\n" for wnid, name in index.values())
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("timm/data/_info/imagenet_synsets.txt", synsets)
        z.writestr("timm/data/_info/imagenet_synset_to_lemma.txt", "n00000001\tentity\n" + lemmas)
    return path


def test_generator_script_reproduces_the_committed_file(tmp_path):
    committed = DEFAULT_LABELS_PATH.read_text()
    wheel = _fake_timm_wheel(tmp_path / "timm-0-py3-none-any.whl", json.loads(committed))
    out = tmp_path / "index.json"
    subprocess.run(
        [sys.executable, "scripts/make_class_index.py", "--wheel", str(wheel), "--output", str(out)],
        cwd=DEFAULT_LABELS_PATH.parent,
        check=True,
        capture_output=True,
    )
    assert out.read_text() == committed


def test_generator_refuses_synsets_out_of_order(tmp_path):
    index = json.loads(DEFAULT_LABELS_PATH.read_text())
    index["0"], index["1"] = index["1"], index["0"]
    wheel = _fake_timm_wheel(tmp_path / "timm.whl", index)
    out = tmp_path / "index.json"
    result = subprocess.run(
        [sys.executable, "scripts/make_class_index.py", "--wheel", str(wheel), "--output", str(out)],
        cwd=DEFAULT_LABELS_PATH.parent,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "sorted order" in result.stderr
