"""`python app.py --serve` in its own process, on a local Ray of its own, and its model replicas' processes:
shared by tests/test_serve.py and bench/serve.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from servers import free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class ServedApp:
    url: str
    process: subprocess.Popen
    log: Path
    started: float
    """time.monotonic() when the process was started."""
    ready_after_s: float = 0.0
    """Seconds from the start to /readyz answering 200."""
    readiness: list[tuple[int, str]] = field(default_factory=list)
    """/readyz's answers (status, text) while it started, each once, in order."""


def get(url: str, timeout: float = 10) -> tuple[int, str]:
    """(status, text) of a GET; (0, why) where nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


def wait_until_ready(served: ServedApp, timeout: float) -> None:
    """Poll /readyz until it answers 200, noting each distinct answer on the way."""
    deadline = time.monotonic() + timeout
    while True:
        status, text = get(served.url + "readyz", timeout=5)
        if status and (not served.readiness or served.readiness[-1] != (status, text)):
            served.readiness.append((status, text))
        if status == 200:
            served.ready_after_s = time.monotonic() - served.started
            return
        if served.process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"the server at {served.url} did not get ready:\n{served.log.read_text()[-4000:]}"
            )
        time.sleep(0.25)


@contextmanager
def serve_app(
    options: Sequence[str], log: Path, *, env: dict[str, str] | None = None, timeout: float = 300
) -> Iterator[ServedApp]:
    """`python app.py --port P *options` on 127.0.0.1 (add "--serve" to `options` for Ray Serve), ready
    (/readyz 200) before it is yielded; stopped after, Ray with it."""
    port = free_port()
    environment = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port), *options],
            cwd=ROOT,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ray's processes with it, to stop them all
        )
    served = ServedApp(f"http://127.0.0.1:{port}/", process, log, time.monotonic())
    try:
        wait_until_ready(served, timeout)
        yield served
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (Ray Serve shuts down in order), then SIGKILL for whatever of its session is left."""
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for pid in session_processes(process.pid):  # Ray's own processes, if any outlived the driver
        with suppress(ProcessLookupError):
            os.kill(pid, 9)


def session_processes(sid: int) -> list[int]:
    """The processes of the session led by `sid` (the server and every process Ray started for it)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except (ProcessLookupError, PermissionError):
                continue
    return pids


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def replica_processes(served: ServedApp, deployment: str = "models") -> list[int]:
    """The processes of the model replicas (Ray names them "ray::ServeReplica:<app>:<deployment>")."""
    return [
        pid
        for pid in session_processes(served.process.pid)
        if command_line(pid).startswith("ray::ServeReplica:") and f":{deployment}" in command_line(pid)
    ]
