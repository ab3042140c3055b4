"""Starting and watching servers on 127.0.0.1: shared by the tests, bench/load.py and docs/screenshot.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gradio_client import Client, handle_file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(demo, photos_first=None, **options) -> Iterator[str]:
    """`demo` (an app.build_demo page) on 127.0.0.1 at a free port, launched with the app's own options
    (theme, limits, cache cleanup, and `photos_first` if the page was built with one; other `options` of
    `launch_options`); yields its URL and closes it after."""
    import app

    port = free_port()
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        **app.launch_options(photos_first=photos_first, **options),
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def wait_until_serving(
    url: str,
    process: subprocess.Popen,
    *,
    timeout: float = 120,
    photo: Path | None = None,
    log: Path | None = None,
) -> Client:
    """Poll until the server at `url` answers (with a prediction for `photo`, when given).

    Raises RuntimeError, with the server's `log` if there is one, when `process` exits or time runs out.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            client = Client(url, verbose=False)
            if photo is not None:
                client.predict(handle_file(str(photo)), api_name="/predict")
            return client
        except Exception:
            if process.poll() is not None or time.monotonic() > deadline:
                details = f":\n{log.read_text()}" if log else ""
                raise RuntimeError(f"the server at {url} did not start{details}") from None
            time.sleep(0.2)


@dataclass
class ServedApp:
    """tests/serve.py running in its own process."""

    url: str
    process: subprocess.Popen
    workdir: Path
    cache: Path
    """Gradio's upload and result cache (GRADIO_TEMP_DIR)."""
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@contextmanager
def serve_oracle(workdir: Path, *options: str, timeout: float = 300) -> Iterator[ServedApp]:
    """tests/serve.py (the app with the oracle model) in its own process, its working directory and Gradio's
    cache in `workdir`; `options` go to serve.py (e.g. "--delete-cache", "2", "10")."""
    cache, log = workdir / "gradio-cache", workdir / "server.log"
    port = free_port()
    env = dict(os.environ, GRADIO_TEMP_DIR=str(cache), PYTHONUNBUFFERED="1")
    with open(log, "w") as stream:
        process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("serve.py")), str(port), *options],
            cwd=workdir,
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(url, process, timeout=timeout, log=log)
        yield ServedApp(url, process, workdir, cache, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def process_figures(pid: int) -> dict[str, float]:
    """A process's resident memory (MB), open file descriptors and threads."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    field = {line.split(":")[0]: line.split(":")[1].split() for line in status if ":" in line}
    return {
        "rss_mb": int(field["VmRSS"][0]) / 1024,
        "open_fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": int(field["Threads"][0]),
    }


def folder_files(folder: Path) -> set[str]:
    return {os.path.join(root, name) for root, _, names in os.walk(folder) for name in names}


def folder_usage(folder: Path, ignore: set[str] | frozenset[str] = frozenset()) -> dict[str, float]:
    """Files, bytes and folders under `folder` (0 when it does not exist yet), and the age in seconds of
    its oldest file by ctime (what Gradio's cleanup goes by); files in `ignore` are not counted."""
    files = size = folders = 0
    oldest = time.time()
    for root, dirs, names in os.walk(folder):
        folders += len(dirs)
        for name in names:
            if os.path.join(root, name) in ignore:
                continue
            try:
                stat = os.lstat(os.path.join(root, name))
            except FileNotFoundError:  # deleted by the cleanup meanwhile
                continue
            files, size, oldest = files + 1, size + stat.st_size, min(oldest, stat.st_ctime)
    return {"files": files, "bytes": size, "folders": folders, "oldest_s": round(time.time() - oldest, 1)}
