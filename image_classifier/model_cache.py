"""The verified cache of converted models (and of the tuner's decisions).

$IMAGE_CLASSIFIER_CACHE, else the system's user cache folder (`cache_dir`), holds one folder per converted
model with a manifest of its files' sizes and SHA-256 digests, written with the files and checked before
every load. A damaged entry is taken out of the way and rebuilt; entries appear by renaming a complete
folder into place, so processes starting together each convert and one copy wins; a cache that can't be
written is warned about once and the work kept in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import platformdirs

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_unwritable_warned: set[Path] = set()


class CacheDamaged(Exception):
    """A cache entry failed its check; the message says how."""


def cache_dir() -> Path:
    """Where converted models and engine decisions are kept: $IMAGE_CLASSIFIER_CACHE, else the platform's
    user cache folder, as platformdirs knows it: ~/.cache/image-classifier on Linux ($XDG_CACHE_HOME
    respected), ~/Library/Caches/image-classifier on macOS, %LOCALAPPDATA%\\image-classifier\\Cache on
    Windows."""
    if folder := os.environ.get("IMAGE_CLASSIFIER_CACHE"):
        return Path(folder)
    return Path(platformdirs.user_cache_dir("image-classifier", appauthor=False))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_entry(folder: Path) -> None:
    """Raise `CacheDamaged` unless each file in the manifest of `folder` has its recorded size and digest."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CacheDamaged(f"no readable manifest: {e}") from None
    for name, expected in files.items():
        path = folder / name
        try:
            size = path.stat().st_size
        except OSError:
            raise CacheDamaged(f"{name} is missing") from None
        if size != expected["bytes"]:
            raise CacheDamaged(f"{name} is {size:,} bytes, not {expected['bytes']:,}")
        if file_sha256(path) != expected["sha256"]:
            raise CacheDamaged(f"{name} does not match its checksum")


def write_entry(folder: Path, fill: Callable[[Path], None]) -> bool:
    """Create the cache entry `folder` whole or not at all: `fill(temporary folder)` writes the files, their
    sizes and digests go into the manifest, and the folder is renamed into place. Where another process got
    there first, its copy stays. False, after one warning per process, where the cache can't be written."""
    parent = folder.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        temporary = Path(tempfile.mkdtemp(prefix=".incomplete-", dir=parent))
    except OSError as e:
        warn_unwritable(e)
        return False
    try:
        fill(temporary)
        files = {
            path.name: {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
            for path in sorted(temporary.iterdir())
        }
        manifest = {"files": files, "created": time.strftime("%FT%T%z")}
        (temporary / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        try:
            os.rename(temporary, folder)
        except OSError:
            if not folder.is_dir():
                raise
        return True  # ours, or an identical one another process renamed into place first
    except OSError as e:  # read-only, full, quota...
        warn_unwritable(e)
        return False
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def discard_entry(folder: Path) -> None:
    """Take a damaged entry out of the way (renamed first, so no reader ever sees half of it deleted)."""
    trash = folder.with_name(f".damaged-{uuid.uuid4().hex}")
    try:
        os.rename(folder, trash)
    except OSError:
        return  # gone already (another process repaired it), or the cache is read-only
    shutil.rmtree(trash, ignore_errors=True)


def warn_unwritable(error: OSError) -> None:
    """One warning per process and cache folder: the work goes on in memory."""
    folder = cache_dir()
    if folder not in _unwritable_warned:
        _unwritable_warned.add(folder)
        logger.warning(
            "Can't write to the model cache %s (%s): the converted model and the engine decision are kept in "
            "memory only, so every start converts and tunes again. Set IMAGE_CLASSIFIER_CACHE to a writable "
            "folder to keep them.",
            folder,
            error.strerror or error,
        )
