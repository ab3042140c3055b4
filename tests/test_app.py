"""The Gradio app for real: a live server on 127.0.0.1, called the way API users call it."""

import os
import subprocess
import sys

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

import app
from conftest import EXAMPLES, EXPECTED, ROOT
from servers import free_port, wait_until_serving


def assert_top5(result, expected_top=None):
    confidences = [entry["confidence"] for entry in result["confidences"]]
    assert len(confidences) == 5
    assert confidences == sorted(confidences, reverse=True) and 0 < confidences[0] <= 1
    assert result["label"] == result["confidences"][0]["label"]
    if expected_top:
        assert result["label"] in expected_top, result


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_predict_endpoint_answers_with_the_top5(client, name):
    assert_top5(client.predict(handle_file(str(EXAMPLES / name)), api_name="/predict"), EXPECTED[name])


def test_non_image_upload_gets_a_readable_error_and_the_server_keeps_answering(client, tmp_path):
    fake = tmp_path / "holiday.jpg"
    fake.write_text("<html><body>definitely not a photo</body></html>")
    with pytest.raises(AppError) as error:
        client.predict(handle_file(str(fake)), api_name="/predict")
    message = str(error.value)
    assert "This file is not an image we can read (PNG, JPEG, WebP, GIF, BMP, TIFF)." in message
    assert "Traceback" not in message and "upstream" not in message.lower() and "Error:" not in message
    assert_top5(
        client.predict(handle_file(str(EXAMPLES / "cat.jpg")), api_name="/predict"), EXPECTED["cat.jpg"]
    )


def test_missing_image_is_a_friendly_error(client):
    with pytest.raises(AppError, match="Add a photo first"):
        client.predict(None, api_name="/predict")


def test_the_demo_is_configured_as_users_expect(oracle):
    import gradio as gr

    demo = app.build_demo(oracle)
    components = list(demo.blocks.values())
    (photo,) = [c for c in components if isinstance(c, app.ImageFile)]
    (bars,) = [c for c in components if isinstance(c, gr.Label)]
    assert set(photo.sources) == {"upload", "webcam", "clipboard"}
    assert photo.get_block_name() == "image"  # the standard image widget in the browser
    assert bars.num_top_classes == 5
    (examples,) = [c for c in components if isinstance(c, gr.Dataset)]
    assert sorted(os.path.basename(sample[0]["path"]) for sample in examples.samples) == sorted(EXPECTED)
    assert [c.label for c in components if isinstance(c, gr.Tab)][0] == "Photo"  # the first tab


def test_the_api_offers_predict_and_explain(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/predict", "/explain"} <= set(endpoints)
    for name in ("/predict", "/explain"):
        (parameter,) = endpoints[name]["parameters"]
        assert parameter["component"] == "Image"
    assert [r["component"] for r in endpoints["/predict"]["returns"]] == ["Label"]
    assert [r["component"] for r in endpoints["/explain"]["returns"]] == ["Label", "Image"]


def test_explain_endpoint_gives_the_label_value_and_the_heatmap_picture(client):
    from PIL import Image

    bars, picture = client.predict(handle_file(str(EXAMPLES / "cat.jpg")), api_name="/explain")
    assert_top5(bars, EXPECTED["cat.jpg"])
    assert bars == client.predict(handle_file(str(EXAMPLES / "cat.jpg")), api_name="/predict")
    with Image.open(picture) as overlay:
        assert overlay.size == Image.open(EXAMPLES / "cat.jpg").size  # small photos keep their size
    with pytest.raises(AppError, match="Add a photo first"):
        client.predict(None, api_name="/explain")


# --- python app.py ------------------------------------------------------------------------------


def test_app_without_reachable_weights_exits_1_with_a_clear_message(offline_env):
    result = subprocess.run(
        [sys.executable, "app.py", "--port", str(free_port())],
        cwd=ROOT,
        env=offline_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: Could not download the pretrained weights for densenet121")
    assert "--weights PATH" in result.stderr and "Traceback" not in result.stderr


def test_app_with_a_local_weights_file_serves_predictions(densenet_weights, offline_env, tmp_path):
    """`python app.py --weights PATH` works offline; GRADIO_SERVER_PORT is honoured as on Spaces."""
    port = free_port()
    env = dict(offline_env, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1")
    log = tmp_path / "app.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "app.py", "--weights", str(densenet_weights)],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        client = wait_until_serving(f"http://127.0.0.1:{port}/", process, log=log)
        assert_top5(client.predict(handle_file(str(EXAMPLES / "coffee.jpg")), api_name="/predict"))
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_cache_cleanup_keeps_going_while_uploads_arrive(tmp_path):
    """`app.delete_old_files` (what the server runs on schedule): old files and their folders go, young ones
    and the page's examples stay, and files arriving during a scan don't stop it (they stopped Gradio
    6.31's own cleanup for good: "Set changed size during iteration")."""
    import threading
    import time
    from types import SimpleNamespace

    cache = tmp_path / "gradio"

    def cached(name: str) -> str:
        path = cache / name / "photo.jpg"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        return str(path)

    example = cached("example")
    old = {cached(f"old{i}") for i in range(2000)}
    files = {example, *old}
    blocks = SimpleNamespace(
        blocks={0: SimpleNamespace(keep_in_cache={example})}, temp_file_sets=[files], GRADIO_CACHE=str(cache)
    )
    time.sleep(0.05)
    arrived, stop = [], threading.Event()

    def uploads() -> None:  # what Gradio's upload route does meanwhile
        while not stop.is_set():
            path = cached(f"new{len(arrived)}")
            arrived.append(path)
            files.add(path)

    thread = threading.Thread(target=uploads)
    thread.start()
    try:
        deleted = app.delete_old_files(blocks, older_than=0.04)
    finally:
        stop.set()
        thread.join()
    assert deleted >= len(old) and not any(os.path.exists(path) for path in old)
    assert not any(os.path.exists(os.path.dirname(path)) for path in old)  # no empty folder left
    assert os.path.exists(example) and example in files and cache.is_dir()
    young = [path for path in arrived if os.path.exists(path)]
    assert young and set(young) <= files  # too young to go, still tracked for the next round
    remaining = len(files) - 1
    assert app.delete_old_files(blocks, older_than=None) == remaining  # when the server stops: all
    assert files == {example} and sorted(p.name for p in cache.iterdir()) == ["example"]


def test_each_heatmap_gets_a_cache_file_of_its_own(server):
    """Gradio rewrites a cached result in place whenever another request makes the same bytes, and a client
    downloading it at that moment got it truncated (the soak saw it once in 3,000 requests): every heatmap
    answer now has its own file."""
    from queue_protocol import QueueSession

    paths = []
    for _ in range(2):
        session = QueueSession(server)
        assert session.join("/explain", [session.upload(EXAMPLES / "rocket.jpg")])[0] == 200
        session.listen()
        label, heatmap = session.result()["output"]["data"]
        assert label["label"] in EXPECTED["rocket.jpg"]
        paths.append(heatmap["path"])
    assert paths[0] != paths[1], paths
