"""Starting and watching servers on 127.0.0.1: shared by the tests, bench/load.py and docs/screenshot.py."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from gradio_client import Client, handle_file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
