"""How long the server remembers a visitor: every browser tab (and every API client) is a session, and what a
session keeps must go when its visitor has gone.

Gradio 6.31 keeps a `SessionState` for every session hash it has seen, up to 10,000 of them: a copy of the
whole page's configuration (about 125 KB for this app's page, measured with tracemalloc) and the session's
`gr.State` values. It deletes a state value only once its `time_to_live` has passed since it was last set,
stretches that to an hour as soon as the tab is closed, never deletes a state that was only read, and never
deletes the `SessionState` itself. A thousand visitors who each look at one photo and leave would stay in
memory for hours. `forget_sessions` drops whole sessions: those whose tab is closed once they have been
unused for `closed_s`, and any session unused for `idle_s`; `forgetting_sessions` runs it on a schedule in
the server's lifespan, and hands the memory they held back to the system (glibc keeps freed small blocks
inside the process: after 1,000 visitors had gone, the server stayed 60 % larger without the trim).
Nothing here knows about the page; it needs only Gradio's state holder.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from image_classifier.allocator import release_memory

logger = logging.getLogger(__name__)

SESSION_IDLE_S = 3600
"""A session nobody has used for an hour is forgotten, tab open or not (an API client's has no tab)."""
SESSION_CLOSED_S = 120
"""A session whose tab was closed is forgotten once unused for this long: time for a phone that lost its
connection for a moment to come back to the same session."""
FORGET_EVERY_S = 10
"""Seconds between two sweeps."""


def forget_sessions(
    state_holder: Any,
    *,
    idle_s: float,
    closed_s: float,
    busy: frozenset[str] | set[str] = frozenset(),
    now: datetime.datetime | None = None,
    queue: Any = None,
) -> int:
    """Forget the sessions of Gradio's `state_holder` unused for `idle_s` seconds, or closed and unused for
    `closed_s`, except those in `busy` (with an event running or waiting): each state value goes through
    its `delete_callback`, then the session itself goes, and its entries in Gradio's `queue` (if given:
    `forget_queue_entries`). Returns how many were forgotten."""
    now = now or datetime.datetime.now()
    with state_holder.lock:
        stale = [
            session
            for session, state in list(state_holder.session_data.items())
            if session not in busy
            and _unused_s(state_holder, session, now) > (closed_s if state.is_closed else idle_s)
        ]
    for session in stale:
        with contextlib.suppress(Exception):  # a callback's failure must not keep the session
            state_holder.delete_state(session)
        with state_holder.lock:
            state_holder.session_data.pop(session, None)
            state_holder.time_last_used.pop(session, None)
    if queue is not None:
        forget_queue_entries(queue, stale)
    return len(stale)


def forget_queue_entries(queue: Any, sessions: list[str]) -> None:
    """Drop what Gradio's queue keeps for each of `sessions` with no event pending. Gradio 6.31 keeps, for
    every session that ever sent an event, a message queue (up to 2,000 sessions) and a set of its pending
    event ids (no limit), both empty once its events are done: small, but kept for ever, a pair per visitor
    (1,050 of each after 1,050 visitors in bench/sessions.py)."""
    for session in sessions:
        if not queue.pending_event_ids_session.get(session):
            queue.pending_event_ids_session.pop(session, None)
            queue.pending_messages_per_session.pop(session, None)


def _unused_s(state_holder: Any, session: str, now: datetime.datetime) -> float:
    last = state_holder.time_last_used.get(session)
    return float("inf") if last is None else (now - last).total_seconds()


def busy_sessions(blocks: Any) -> set[str]:
    """The sessions with an event waiting or running in Gradio's queue, or a stream open."""
    queue = getattr(blocks, "_queue", None)
    busy: set[str] = set(getattr(blocks, "pending_streams", {}) or {})
    if queue is not None:
        for event in list(queue.event_ids_to_events.values()):
            busy.add(event.session_hash)
        for job in list(queue.active_jobs):
            busy.update(event.session_hash for event in job or ())
    busy.discard(None)
    return busy


def forgetting_sessions(
    every: float = FORGET_EVERY_S, idle_s: float = SESSION_IDLE_S, closed_s: float = SESSION_CLOSED_S
) -> Callable[[Any], contextlib.AbstractAsyncContextManager]:
    """A server lifespan that runs `forget_sessions` every `every` seconds."""

    @contextlib.asynccontextmanager
    async def lifespan(server: Any) -> AsyncIterator[None]:
        async def on_schedule() -> None:
            while True:
                await asyncio.sleep(every)
                try:
                    blocks = server.get_blocks()
                    forgotten = forget_sessions(
                        server.state_holder,
                        idle_s=idle_s,
                        closed_s=closed_s,
                        busy=busy_sessions(blocks),
                        queue=getattr(blocks, "_queue", None),
                    )
                    if forgotten:  # their photos and maps were small blocks: glibc keeps them unless trimmed
                        await asyncio.to_thread(release_memory)
                except Exception:  # logged; the next round tries again
                    logger.exception("Could not forget old sessions; trying again in %s s", every)

        task = asyncio.create_task(on_schedule())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return lifespan
