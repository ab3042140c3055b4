"""Visitors' sessions are forgotten once they have gone: their state values through their delete callbacks,
and Gradio's per-session copy of the page with them."""

import datetime
import threading
import time

import gradio as gr
from gradio.state_holder import StateHolder

from image_classifier.sessions import busy_sessions, forget_sessions
from queue_protocol import QueueSession
from servers import free_port

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0)


def holder_with_sessions(deleted: list) -> tuple[StateHolder, gr.State]:
    with gr.Blocks() as demo:
        photo = gr.State(time_to_live=600, delete_callback=deleted.append)
        gr.State("a model")  # only ever read: Gradio itself never deletes it
    holder = StateHolder()
    holder.set_blocks(demo)
    return holder, photo


def used(
    holder: StateHolder, session: str, minutes_ago: float, photo: gr.State, closed: bool = False
) -> None:
    holder[session][photo._id] = f"photo of {session}"
    holder.time_last_used[session] = NOW - datetime.timedelta(minutes=minutes_ago)
    holder.session_data[session].is_closed = closed


def test_closed_tabs_go_after_a_short_while_open_ones_after_long_idleness():
    deleted = []
    holder, photo = holder_with_sessions(deleted)
    used(holder, "open-recent", 5, photo)
    used(holder, "open-idle", 61, photo)
    used(holder, "closed-recent", 1, photo, closed=True)
    used(holder, "closed-a-while", 3, photo, closed=True)
    used(holder, "closed-but-busy", 30, photo, closed=True)

    forgotten = forget_sessions(holder, idle_s=3600, closed_s=120, busy={"closed-but-busy"}, now=NOW)

    assert forgotten == 2
    assert set(holder.session_data) == {"open-recent", "closed-recent", "closed-but-busy"}
    assert set(holder.time_last_used) == set(holder.session_data)
    assert sorted(deleted) == ["photo of closed-a-while", "photo of open-idle"]


def test_a_session_comes_back_fresh_after_it_was_forgotten():
    deleted = []
    holder, photo = holder_with_sessions(deleted)
    used(holder, "visitor", 90, photo)
    assert forget_sessions(holder, idle_s=3600, closed_s=120, now=NOW) == 1
    assert holder["visitor"][photo._id] is None  # the default again, no error
    assert forget_sessions(holder, idle_s=3600, closed_s=120) == 0  # just used


def test_busy_sessions_are_those_with_an_event_running_or_waiting():
    release = threading.Event()

    def slow(value):
        release.wait(30)
        return value

    with gr.Blocks() as demo:
        box = gr.Textbox()
        gr.Button().click(slow, box, box, api_name="slow", concurrency_limit=1)
    demo.queue()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    sessions = [QueueSession(f"http://127.0.0.1:{port}/") for _ in range(2)]
    try:
        for session in sessions:
            assert session.join("/slow", ["hello"])[0] == 200
            session.listen()
        sessions[0].wait_for("process_starts")
        assert busy_sessions(demo) == {s.session_hash for s in sessions}  # one running, one waiting
        release.set()
        for session in sessions:
            assert session.result()["success"]
        deadline = time.monotonic() + 20
        while busy_sessions(demo) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert busy_sessions(demo) == set()
    finally:
        release.set()
        demo.close()


def test_a_forgotten_session_leaves_nothing_in_gradios_queue_and_can_come_back():
    """Gradio's queue keeps a message queue and a set of event ids for every session that sent an event,
    empty once its events are done, and never drops the set: forgetting a session drops both."""
    with gr.Blocks() as demo:
        box = gr.Textbox()
        gr.Button().click(str.upper, box, box, api_name="upper")
    demo.queue()
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url, queue, holder = f"http://127.0.0.1:{port}/", demo._queue, demo.server_app.state_holder

    def visit(session: QueueSession, text: str) -> str:
        assert session.join("/upper", [text])[0] == 200
        session.listen()
        return session.result()["output"]["data"][0]

    try:
        gone, staying = QueueSession(url), QueueSession(url)
        assert (visit(gone, "left"), visit(staying, "still here")) == ("LEFT", "STILL HERE")
        assert {gone.session_hash, staying.session_hash} <= set(queue.pending_event_ids_session)
        holder.time_last_used[gone.session_hash] -= datetime.timedelta(hours=2)
        assert forget_sessions(holder, idle_s=3600, closed_s=120, queue=queue) == 1
        assert gone.session_hash not in queue.pending_event_ids_session
        assert gone.session_hash not in queue.pending_messages_per_session
        assert staying.session_hash in queue.pending_messages_per_session
        assert visit(gone, "back") == "BACK"
    finally:
        demo.close()


def test_the_scheduled_sweep_trims_the_allocator_only_after_forgetting_someone(monkeypatch):
    """The sweep hands freed memory back to the system (glibc keeps it otherwise: bench/sessions.py), but
    only when it forgot a session: a trim costs time on a large heap."""
    import asyncio
    import contextvars
    from types import SimpleNamespace

    from image_classifier import sessions

    trims = []
    # The session-scoped servers of other tests sweep too, and trim through the same function: only this
    # test's sweeps (their context, which asyncio.to_thread carries into the trim's thread) are counted.
    ours = contextvars.ContextVar("ours", default=False)
    monkeypatch.setattr(
        sessions, "release_memory", lambda: ours.get() and trims.append(len(holder.session_data))
    )
    holder, photo = holder_with_sessions([])
    used(holder, "gone", 0, photo, closed=True)
    holder.time_last_used["gone"] = datetime.datetime.now()
    server = SimpleNamespace(state_holder=holder, get_blocks=lambda: SimpleNamespace())

    async def sweep_for(seconds: float) -> None:
        ours.set(True)
        async with sessions.forgetting_sessions(every=0.05, idle_s=3600, closed_s=0.2)(server):
            await asyncio.sleep(seconds)

    asyncio.run(sweep_for(0.1))  # "gone" was just used: nothing forgotten, no trim
    assert trims == [] and set(holder.session_data) == {"gone"}
    holder.time_last_used["gone"] = datetime.datetime.now() - datetime.timedelta(seconds=5)
    asyncio.run(sweep_for(0.3))
    assert trims == [0]  # once, after the session went
