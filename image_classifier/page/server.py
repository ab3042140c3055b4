"""The server around the page: its look (an accessible theme), the upload limit, and its lifespan (the
cache of uploads and results cleaned on a schedule, and emptied when the server stops; visitors' sessions
forgotten once they have gone)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Sequence

import gradio as gr
from fastapi import FastAPI
from starlette.middleware import Middleware
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from image_classifier.live import PhotosFirst
from image_classifier.sessions import SESSION_CLOSED_S, SESSION_IDLE_S, forgetting_sessions

from .settings import DELETE_CACHE, MAX_FILE_SIZE, MAX_SESSIONS

logger = logging.getLogger(__name__)

CSS = ".toast-message-text { white-space: pre-line; }"
"""Error messages keep their line breaks (a failed load lists its ways out one per line)."""
# Gradio's default theme with a blue accent and darker secondary text: every text passes WCAG AA contrast.
THEME = gr.themes.Default(primary_hue="blue").set(
    body_text_color_subdued="*neutral_600",
    button_primary_background_fill="*primary_700",
    button_primary_background_fill_hover="*primary_800",
)


def launch_options(
    max_file_size: str = MAX_FILE_SIZE,
    delete_cache: tuple[float, float] = DELETE_CACHE,
    routes: Sequence[BaseRoute] = (),
    sessions: tuple[float, float] = (SESSION_IDLE_S, SESSION_CLOSED_S),
    photos_first: PhotosFirst | None = None,
) -> dict:
    """What every launch of the page passes to `launch()`: the accessible theme, the page's CSS, the upload
    limit, no run history, the cleanup of uploads and results (every `delete_cache[0]` seconds, those older
    than `delete_cache[1]`), how long sessions are remembered (`sessions`: the seconds unused after which any
    session is forgotten, and one whose tab was closed; image_classifier/sessions.py), `routes` on the
    server beside the page's (/healthz, /readyz, /metrics), and `photos_first` (the one the page was built
    with) told when a photo's upload begins, so that live frames give way to it from then on.

    Gradio 6.24+ records calls (their photos and answers) in the browser for a "runs" page unless told not
    to; this page keeps nothing, there either (`run_history=False` also deletes what an earlier version
    recorded)."""
    idle_s, closed_s = sessions
    return {
        "theme": THEME,
        "css": CSS,
        "max_file_size": max_file_size,
        "run_history": False,
        "state_session_capacity": MAX_SESSIONS,
        "app_kwargs": {
            "lifespan": both(
                clean_cache(*delete_cache),
                forgetting_sessions(every=min(10.0, closed_s / 4), idle_s=idle_s, closed_s=closed_s),
            ),
            "routes": list(routes),
            "middleware": [Middleware(PhotoArrivals, photos_first=photos_first)] if photos_first else [],
        },
    }


class PhotoArrivals:
    """ASGI middleware that tells `photos_first` when an upload begins and when it has ended: a photo is
    coming, most likely, and the page's event and the queue still lie before its handler
    (image_classifier/live.py). Any upload counts; frames still run every `max_wait` seconds."""

    def __init__(self, app: ASGIApp, photos_first: PhotosFirst) -> None:
        self.app, self.photos_first = app, photos_first

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        upload = scope["type"] == "http" and scope["method"] == "POST" and scope["path"].endswith("/upload")
        if not upload:
            await self.app(scope, receive, send)
            return
        self.photos_first.photo_coming()
        try:
            await self.app(scope, receive, send)
        finally:
            self.photos_first.photo_arrived()


def both(first, second):
    """One server lifespan out of two: `first` starts first and ends last."""

    @contextlib.asynccontextmanager
    async def lifespan(server):
        async with first(server), second(server):
            yield

    return lifespan


def mounted(
    demo: gr.Blocks,
    routes: Sequence[BaseRoute],
    max_file_size: str = MAX_FILE_SIZE,
    photos_first: PhotosFirst | None = None,
) -> FastAPI:
    """The page mounted at / on a FastAPI app of its own with `routes` beside it, as an ASGI server (Ray
    Serve's ingress) runs it: the same options as `launch()` gets."""
    options = launch_options(max_file_size, photos_first=photos_first)
    demo.state_session_capacity = options.pop("state_session_capacity")  # not an option of mount_gradio_app
    return gr.mount_gradio_app(FastAPI(routes=list(routes)), demo, "/", **options)


def clean_cache(every: float, older_than: float):
    """A server lifespan that deletes the app's old uploads and results on a schedule, and all of them when
    the server stops: what Gradio's `delete_cache` promises. Gradio 6.31's own stops for good the first time
    an upload lands during its scan ("Set changed size during iteration" ends its task), after which the
    cache grows for the life of the server; the soak (bench/soak.py) found it."""

    @contextlib.asynccontextmanager
    async def lifespan(server):
        async def on_schedule() -> None:
            while True:
                await asyncio.sleep(every)
                try:
                    await delete_old_files_on_loop(server.get_blocks(), older_than)
                except Exception:  # logged; the next round tries again
                    logger.exception("Could not clean Gradio's cache; trying again in %s s", every)

        task = asyncio.create_task(on_schedule())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            delete_old_files(server.get_blocks(), None)

    return lifespan


async def delete_old_files_on_loop(blocks: gr.Blocks, older_than: float, chunk: int = 200) -> int:
    """`delete_old_files` on a running server. Gradio's upload route makes a folder named by the upload's
    content and moves the file into it, with no await between: a cleanup thread that removed the folder
    between the two failed the upload (the soak saw it, a photo uploaded again as its old copy went). So
    the files are found in a thread, and deleted with their folders on the event loop, `chunk` at a time."""
    now = time.time()
    old = await asyncio.to_thread(old_files, blocks, older_than, now)
    deleted = 0
    for start in range(0, len(old), chunk):
        deleted += delete_files(blocks, old[start : start + chunk], older_than)
        await asyncio.sleep(0)  # requests go on between chunks
    cache = os.path.realpath(blocks.GRADIO_CACHE)
    return deleted + await asyncio.to_thread(delete_stray_files, cache, older_than, now)


def delete_old_files(blocks: gr.Blocks, older_than: float | None) -> int:
    """Delete the files the app created (uploads, results) that are older than `older_than` seconds by
    ctime, all of them when None, and each one's folder once it is empty (Gradio keeps one folder per file);
    files Gradio keeps for the page (the examples) stay. Returns how many files went."""
    now = time.time()
    deleted = delete_files(blocks, old_files(blocks, older_than, now), older_than)
    return deleted + delete_stray_files(os.path.realpath(blocks.GRADIO_CACHE), older_than, now)


def old_files(blocks: gr.Blocks, older_than: float | None, now: float) -> list[str]:
    """The files the app created that are older than `older_than` seconds at `now` (all when None), less
    those Gradio keeps for the page."""
    keep = set()
    for component in blocks.blocks.values():
        keep.update(getattr(component, "keep_in_cache", ()))
    old = []
    for files in blocks.temp_file_sets:
        for file in list(files):  # a copy: requests add files while this runs
            if file in keep:
                continue
            try:
                if older_than is None or now - os.lstat(file).st_ctime > older_than:
                    old.append(file)
            except FileNotFoundError:
                old.append(file)  # gone already: forgotten with the others
    return old


def delete_files(blocks: gr.Blocks, files: list[str], older_than: float | None) -> int:
    """Delete `files` unless one has become young again (the same content uploaded anew), forget them, and
    remove each one's folder once it is empty. Returns how many files went."""
    cache, now, deleted = os.path.realpath(blocks.GRADIO_CACHE), time.time(), 0
    for file in files:
        try:
            if older_than is not None and now - os.lstat(file).st_ctime <= older_than:
                continue
            os.remove(file)
            deleted += 1
        except FileNotFoundError:
            pass
        for registered in blocks.temp_file_sets:
            registered.discard(file)
        folder = os.path.dirname(os.path.realpath(file))
        if os.path.dirname(folder) == cache:
            with contextlib.suppress(OSError):  # not empty: another file with the same content
                os.rmdir(folder)
    return deleted


def delete_stray_files(cache: str, older_than: float | None, now: float) -> int:
    """Delete the empty files Gradio 6.31 leaves in its cache's top folder: the preprocessing of an
    UploadButton, File or DownloadButton opens a `NamedTemporaryFile(delete=False)` there for every file
    and never uses or registers it (one per photo of a Many photos upload; the soak found them)."""
    deleted = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(cache) as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                if not entry.name.startswith("tmp") or not entry.is_file(follow_symlinks=False):
                    continue
                stat = entry.stat(follow_symlinks=False)
                if not stat.st_size and (older_than is None or now - stat.st_ctime > older_than):
                    os.remove(entry.path)
                    deleted += 1
    return deleted
