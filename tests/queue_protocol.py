"""Gradio's queue over raw HTTP, as the browser speaks it: upload, join, then the server-sent event stream,
with the power to hang up at any moment (gradio_client keeps its connections to itself).

    session = QueueSession(url)
    session.join("/predict", [session.upload(photo)])
    session.listen()
    session.wait_for("process_starts")
    session.hang_up()                     # mid-request
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time
import urllib.request
import uuid
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit


@cache
def fn_indices(url: str) -> dict[str, int]:
    """API name ("/predict") -> the event's index, from the page's config."""
    with urllib.request.urlopen(url + "config", timeout=30) as response:
        config = json.load(response)
    return {f"/{d['api_name']}": d["id"] for d in config["dependencies"] if d.get("api_name")}


class QueueSession:
    """One browser-like session: its own session hash, its own event stream."""

    def __init__(self, url: str, timeout: float = 60) -> None:
        self.url, self.timeout = url, timeout
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.session_hash = uuid.uuid4().hex[:11]
        self.stream: http.client.HTTPConnection | None = None
        self.response: http.client.HTTPResponse | None = None
        self.received: list[dict] = []

    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def upload(self, path: Path) -> dict:
        """Upload a file as the page does; returns the FileData an event takes."""
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{path.name}"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + path.read_bytes()
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        status, answer = self._request("POST", "/gradio_api/upload", body, headers)
        assert status == 200, (status, answer[:200])
        (server_path,) = json.loads(answer)
        return {"path": server_path, "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}

    def join(self, api_name: str, data: list, event_data: dict | None = None) -> tuple[int, dict]:
        """Queue an event (`event_data`: what the browser says of a select, say); returns the HTTP status and
        the answer ({"event_id": ...} when queued)."""
        body = {
            "data": data,
            "fn_index": fn_indices(self.url)[api_name],
            "session_hash": self.session_hash,
            "event_data": event_data,
            "trigger_id": None,
        }
        status, answer = self._request(
            "POST", "/gradio_api/queue/join", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        return status, json.loads(answer)

    @contextlib.contextmanager
    def tab_open(self):
        """The page's heartbeat stream, open while the tab is: Gradio marks the session closed as it ends."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            connection.request("GET", f"/gradio_api/heartbeat/{self.session_hash}")
            response = connection.getresponse()
            assert response.status == 200, response.status
            response.readline()  # the first "ALIVE"
            yield
        finally:
            if connection.sock is not None:
                with contextlib.suppress(OSError):
                    connection.sock.shutdown(socket.SHUT_RDWR)
            connection.close()

    def listen(self) -> None:
        """Open the session's event stream (the page opens it right after joining)."""
        self.stream = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self.stream.request("GET", f"/gradio_api/queue/data?session_hash={self.session_hash}")
        self.response = self.stream.getresponse()
        assert self.response.status == 200, self.response.status

    def next_message(self) -> dict:
        """The next message of the stream (heartbeats skipped)."""
        assert self.response is not None, "listen() first"
        while True:
            line = self.response.readline()
            if not line:
                raise ConnectionError("the server closed the stream")
            if line.startswith(b"data:"):
                message = json.loads(line[5:])
                if message.get("msg") != "heartbeat":
                    self.received.append(message)
                    return message

    def wait_for(self, *kinds: str, timeout: float | None = None) -> dict:
        """Read the stream until a message of one of `kinds` ("estimation", "process_starts",
        "process_completed", "close_stream")."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            message = self.next_message()
            if message.get("msg") in kinds:
                return message
        raise TimeoutError(f"no {kinds} in {self.received}")

    def hang_up(self) -> None:
        """Drop the connection at once, as a closed tab or a lost network does."""
        if self.stream is not None and self.stream.sock is not None:
            with contextlib.suppress(OSError):
                self.stream.sock.shutdown(socket.SHUT_RDWR)
        if self.stream is not None:
            self.stream.close()
        self.stream = self.response = None

    def result(self, timeout: float | None = None) -> dict:
        """Wait for the event to complete; returns the process_completed message."""
        message = self.wait_for("process_completed", timeout=timeout)
        self.hang_up()
        return message
