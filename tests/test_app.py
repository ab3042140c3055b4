"""The Gradio app for real: a live server on 127.0.0.1, called the way API users call it."""

import contextlib
import copy
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import gradio as gr
import gradio.networking
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import app
from conftest import EXAMPLES, EXPECTED, ROOT
from image_classifier.live import PhotosFirst
from image_classifier.page.answers import HeatmapRequests
from image_classifier.page.components import ImageFile, ModelChoice
from image_classifier.page.models import as_model_set, model_card
from image_classifier.page.server import delete_old_files
from servers import free_port, serving, wait_until_serving


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
    (photo,) = [c for c in components if isinstance(c, ImageFile) and c.label == "Photo"]
    (bars,) = [c for c in components if isinstance(c, gr.Label) and c.label == "Top 5"]
    assert set(photo.sources) == {"upload", "webcam", "clipboard"}
    assert photo.get_block_name() == "image"  # the standard image widget in the browser
    assert bars.num_top_classes == 5
    for examples in [c for c in components if isinstance(c, gr.Dataset)]:  # the Photo and Compare tabs'
        assert sorted(os.path.basename(sample[0]["path"]) for sample in examples.samples) == sorted(EXPECTED)
    tabs = [c for c in components if isinstance(c, gr.Tab)]
    assert tabs[0].label == "Photo"  # the first tab
    # One model: nothing to choose or compare, so no picker and no Compare tab.
    (compare,) = [tab for tab in tabs if tab.label == "Compare"]
    assert compare.visible is False
    assert all(
        not c.visible
        for c in components
        if isinstance(c, gr.Row) and any(isinstance(child, ModelChoice) for child in c.children)
    )


def test_with_several_models_the_photo_tab_has_a_picker_and_a_card(models):
    import gradio as gr

    demo = app.build_demo(models)
    components = list(demo.blocks.values())
    (picker,) = [c for c in components if isinstance(c, ModelChoice) and c.label == "Model"]
    assert [value for _, value in picker.choices] == models.names and picker.value == models.default
    assert picker.get_block_name() == "dropdown"
    assert ("resnet18 (69.8 % top-1)", "resnet18") in picker.choices  # torchvision's figure, in the list
    (card,) = [c for c in components if isinstance(c, gr.Markdown) and c.elem_id == "model-card"]
    assert card.value.startswith("**EfficientNet-Lite0**") and "ms per photo" in card.value
    (compare,) = [c for c in components if isinstance(c, gr.Tab) and c.label == "Compare"]
    assert compare.visible is True


def test_the_api_offers_predict_and_explain(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/predict", "/explain", "/classify", "/compare"} <= set(endpoints)
    (parameter,) = endpoints["/predict"]["parameters"]
    assert parameter["component"] == "Image"
    photo, label = endpoints["/explain"]["parameters"]  # a label is optional
    assert (
        photo["component"] == "Image" and label["component"] == "Dropdown" and label["parameter_has_default"]
    )
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


def test_explain_endpoint_shows_any_label_with_its_probability(client, oracle):
    from PIL import Image

    cat = handle_file(str(EXAMPLES / "cat.jpg"))
    bars, picture = client.predict(cat, "goldfish", api_name="/explain")
    top = client.predict(cat, api_name="/predict")
    confidences = {entry["label"]: entry["confidence"] for entry in bars["confidences"]}
    assert len(confidences) == 5 and bars["label"] == top["label"]
    assert list(confidences)[:4] == [entry["label"] for entry in top["confidences"]][:4]
    expected = oracle.predict(EXAMPLES / "cat.jpg", top_k=1000)["goldfish"]
    assert confidences["goldfish"] == pytest.approx(expected, abs=1e-4)
    with Image.open(picture) as overlay:
        assert overlay.size == Image.open(EXAMPLES / "cat.jpg").size
    with pytest.raises(AppError):
        client.predict(cat, "not a class", api_name="/explain")


def test_explain_endpoint_with_the_gradcam_fallback_gives_the_same_bars_and_a_heatmap(
    fallback_server, client
):
    from gradio_client import Client
    from PIL import Image

    fallback = Client(fallback_server, verbose=False)
    bars, picture = fallback.predict(handle_file(str(EXAMPLES / "cat.jpg")), api_name="/explain")
    assert bars == client.predict(handle_file(str(EXAMPLES / "cat.jpg")), api_name="/predict")
    with Image.open(picture) as overlay:
        assert overlay.size == Image.open(EXAMPLES / "cat.jpg").size


def test_a_nan_answer_is_a_plain_error_on_the_api(labels, tmp_path):
    """A model whose answer is NaN (a damaged model, an engine fault): the API says so, never shows NaN."""
    import torch
    from gradio_client import Client
    from PIL import Image

    from classifier import Classifier
    from image_classifier.engines import NON_FINITE_MESSAGE

    class NaNModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3, 1000)

        def forward(self, batch):
            return self.linear(batch.mean(dim=(2, 3))) * float("nan")

    demo = app.build_demo(Classifier(NaNModel(), labels, device="cpu", precision="exact"), examples=[])
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        photo = tmp_path / "photo.jpg"
        Image.open(EXAMPLES / "cat.jpg").save(photo)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        for endpoint in ("/predict", "/explain"):
            with pytest.raises(AppError) as error:
                client.predict(handle_file(str(photo)), api_name=endpoint)
            assert NON_FINITE_MESSAGE in str(error.value) and "Traceback" not in str(error.value)
    finally:
        demo.close()


def test_the_model_card_names_the_engine_and_why(oracle):
    models = as_model_set(oracle, "EfficientNet-Lite0")
    models.load_default()
    card = model_card(models, "EfficientNet-Lite0")
    assert f"ms per photo** on {oracle.engine_choice.describe()}" in card
    assert oracle.engine_choice.how in ("tuned", "cached") and "keeps the answers" in card


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


@pytest.mark.parametrize(
    "models, message",
    [("resnet18,resnet9000", "Unknown model 'resnet9000'"), (" , ", "No models named")],
)
def test_app_with_unknown_models_exits_1_naming_them(models, message):
    result = subprocess.run(
        [sys.executable, "app.py", "--models", models], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1 and result.stderr.startswith(f"error: {message}"), result.stderr
    assert "Traceback" not in result.stderr


def test_the_command_line_offers_the_default_set_or_all():
    from classifier import DEFAULT_MODELS

    assert app.parse_args([]).models == ",".join(DEFAULT_MODELS)
    assert app.parse_args(["--models", "all", "--model-memory", "3000"]).model_memory == 3000


def test_the_cache_cleanup_keeps_going_while_uploads_arrive(tmp_path):
    """`delete_old_files` (what the server runs on schedule): old files and their folders go, young ones
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
        deleted = delete_old_files(blocks, older_than=0.04)
    finally:
        stop.set()
        thread.join()
    assert deleted >= len(old) and not any(os.path.exists(path) for path in old)
    assert not any(os.path.exists(os.path.dirname(path)) for path in old)  # no empty folder left
    assert os.path.exists(example) and example in files and cache.is_dir()
    young = [path for path in arrived if os.path.exists(path)]
    assert young and set(young) <= files  # too young to go, still tracked for the next round
    remaining = len(files) - 1
    assert delete_old_files(blocks, older_than=None) == remaining  # when the server stops: all
    assert files == {example} and sorted(p.name for p in cache.iterdir()) == ["example"]
    # Gradio's file components leave an empty, unregistered NamedTemporaryFile in the cache's top folder
    (cache / "tmpstray").touch()
    (cache / "tmpwritten").write_bytes(b"not ours to judge")
    time.sleep(0.05)
    assert delete_old_files(blocks, older_than=10) == 0 and (cache / "tmpstray").exists()  # young
    assert delete_old_files(blocks, older_than=0.04) == 1 and not (cache / "tmpstray").exists()
    assert sorted(p.name for p in cache.iterdir()) == ["example", "tmpwritten"]


def test_the_cache_cleanup_removes_folders_on_the_servers_event_loop(oracle, monkeypatch):
    """Gradio's upload route makes a folder named by the upload's content and moves the file into it, with
    no await between; the cleanup deletes old files and their folders. From a thread, it once removed a
    folder between the two and failed the upload (the soak saw it: a file uploaded again as its old copy
    went). On the server's event loop it cannot come between them."""
    import asyncio
    import json
    import time

    removed = []  # (folder, whether an event loop was running it)
    rmdir = os.rmdir

    def watched_rmdir(path, *args, **kwargs):
        try:
            on_loop = asyncio.get_running_loop() is not None
        except RuntimeError:
            on_loop = False
        removed.append((os.fspath(path), on_loop))
        return rmdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "rmdir", watched_rmdir)
    demo = app.build_demo(oracle, examples=[])
    with serving(demo, delete_cache=(0.05, 0.2)) as url:
        with urllib.request.urlopen(upload_request(url, os.urandom(4096)), timeout=60) as answer:
            [old] = json.load(answer)  # bytes of its own: a folder of its own
        folder = os.path.realpath(os.path.dirname(old))
        deadline = time.monotonic() + 10
        while os.path.exists(folder) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not os.path.exists(old) and not os.path.exists(folder)  # deleted on schedule, with its folder
    assert [on_loop for path, on_loop in removed if path == folder] == [True]


def test_only_the_newest_heatmap_request_is_shown_once_and_each_session_numbers_its_own():
    requests = HeatmapRequests()
    photo = requests.new()
    picked_class = requests.new()  # a class picked while the photo's maps were being made
    assert not requests.to_show(photo) and not requests.is_newest(photo)
    assert requests.is_newest(picked_class)
    assert requests.to_show(picked_class) and not requests.to_show(picked_class)  # its twin: drawn already
    another_session = copy.deepcopy(requests)  # how gr.State gives each session its own
    assert another_session.to_show(another_session.new()) and requests.is_newest(picked_class)


def test_each_heatmap_gets_a_cache_file_of_its_own(server):
    """Gradio rewrites a cached result in place whenever another request makes the same bytes, and a client
    downloading it at that moment got it truncated (the soak saw it once in 3,000 requests): every heatmap
    answer now has its own file."""
    from queue_protocol import QueueSession

    paths = []
    for _ in range(2):
        session = QueueSession(server)
        assert session.join("/explain", [session.upload(EXAMPLES / "rocket.jpg"), None])[0] == 200  # no label
        session.listen()
        label, heatmap = session.result()["output"]["data"]
        assert label["label"] in EXPECTED["rocket.jpg"]
        paths.append(heatmap["path"])
    assert paths[0] != paths[1], paths


def test_the_page_keeps_no_run_history(server):
    """Gradio 6.24+ records calls in the browser for a "runs" page unless told not to: the page keeps none,
    so its config tells the browser to record nothing (and delete what it had), and the page is gone."""
    import httpx

    config = httpx.get(f"{server}config", timeout=30).json()
    assert config["run_history"] is False and "runs" not in config["footer_links"]
    assert httpx.get(f"{server}gradio_api/runs", timeout=30).status_code == 404


# --- the command line's limits, each followed to where it acts ---------------------------------------


def upload(url: str, data: bytes) -> int:
    """POST `data` as a file to Gradio's upload route; its HTTP status."""
    try:
        with urllib.request.urlopen(upload_request(url, data), timeout=60) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def upload_request(url: str, data: bytes) -> urllib.request.Request:
    """A POST of `data` as a file named photo.jpg to Gradio's upload route."""
    boundary = "----limits-test-boundary"
    payload = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="photo.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return urllib.request.Request(
        url + "gradio_api/upload",
        data=payload,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        method="POST",
    )


@contextlib.contextmanager
def launched(monkeypatch, *options: str):
    """`app.main([...options])` in this process, on 127.0.0.1 at a free port, returning once it serves:
    yields the launched page. No share link can be made here (no internet): Gradio's tunnel is replaced by
    one that records being asked."""
    pages, tunnels = [], []
    launch = gr.Blocks.launch

    def launch_here(self, **kwargs):
        pages.append(self)
        return launch(self, **kwargs, prevent_thread_lock=True, quiet=True)

    def tunnel(**kwargs):
        tunnels.append(kwargs)
        return "https://limits-test.gradio.live"

    monkeypatch.setattr(gr.Blocks, "launch", launch_here)
    monkeypatch.setattr(gradio.networking, "setup_tunnel", tunnel)
    log = logging.getLogger("image_classifier")
    monkeypatch.setattr(log, "handlers", list(log.handlers))  # main() adds its own: gone after the test
    monkeypatch.setattr(log, "level", log.level)
    port = free_port()
    models = ["--models", "resnet18", "--model", "resnet18", "--engine", "torch-fp32"]  # no conversion
    assert app.main(["--host", "127.0.0.1", "--port", str(port), *models, *options]) == 0
    (page,) = pages
    page.tunnels = tunnels
    try:
        yield page
    finally:
        page.close()


def test_each_limit_on_the_command_line_reaches_where_it_acts(torch_home, monkeypatch):
    options = ["--max-file-size", "50kb", "--max-megapixels", "0.1", "--queue-size", "7"]
    with launched(monkeypatch, *options, "--max-batch-files", "2", "--share") as page:
        url = page.local_url
        # --max-file-size: Gradio's upload route refuses more, before anything is decoded
        assert upload(url, (EXAMPLES / "coffee.jpg").read_bytes()) == 413  # 71 KB
        assert upload(url, (EXAMPLES / "cat.jpg").read_bytes()) == 200  # 34 KB
        # --max-megapixels: the classifier refuses a larger photo, in words (cat.jpg is 451×300)
        client = Client(url, verbose=False)
        with pytest.raises(AppError, match="The image is 451×300 pixels; the limit is 0.1 megapixels"):
            client.predict(handle_file(str(EXAMPLES / "cat.jpg")), api_name="/predict")
        # --queue-size: the size Gradio's queue turns requests away at
        assert page._queue.max_size == 7
        # --max-batch-files: the Many photos tab's handler refuses a third photo, in words
        (many,) = [fn for fn in page.fns.values() if fn.name == "classify_many"]
        with pytest.raises(gr.Error, match="at most 2 photos"):
            three = [str(EXAMPLES / name) for name in ("cat.jpg", "coffee.jpg", "rocket.jpg")]
            next(many.fn(three, "resnet18"))
        # two are taken; the CSV's folder goes once Gradio has taken the file (the generator resumes)
        answer = many.fn([str(EXAMPLES / name) for name in ("cat.jpg", "coffee.jpg")], "resnet18")
        rows, download = next(answer)
        csv_path = Path(download.constructor_args["value"])
        assert len(rows) == 2 and csv_path.read_text().count("\n") == 3
        assert next(answer, None) is None and not csv_path.parent.exists()
        # --share: Gradio opened its tunnel to this server, and has the public link
        assert [tunnel["local_port"] for tunnel in page.tunnels] == [page.server_port]
        assert page.share_url == "https://limits-test.gradio.live"


def test_without_options_the_defaults_act_and_no_link_is_shared(torch_home, monkeypatch):
    monkeypatch.delenv("GRADIO_SHARE", raising=False)
    with launched(monkeypatch) as page:
        assert upload(page.local_url, (EXAMPLES / "coffee.jpg").read_bytes()) == 200
        assert page._queue.max_size == 32 and page.tunnels == [] and page.share_url is None


def test_the_server_tells_live_frames_when_a_photo_is_on_its_way(oracle):
    """Live frames give way to a photo from the moment its upload begins (image_classifier/live.py): the
    server says so when an upload begins and when it has arrived, and on no other request."""

    class Watched(PhotosFirst):
        def __init__(self) -> None:
            super().__init__()
            self.told: list[str] = []

        def photo_coming(self) -> None:
            self.told.append("coming")
            super().photo_coming()

        def photo_arrived(self) -> None:
            self.told.append("arrived")
            super().photo_arrived()

    photos_first = Watched()
    demo = app.build_demo(oracle, examples=[], photos_first=photos_first)
    with serving(demo, photos_first) as url:
        urllib.request.urlopen(url + "config", timeout=30).read()
        assert photos_first.told == []
        assert upload(url, (EXAMPLES / "cat.jpg").read_bytes()) == 200
        assert photos_first.told == ["coming", "arrived"]
        assert upload(url, b"not a photo") == 200  # whatever it holds: frames give way for a second at most
        assert photos_first.told == ["coming", "arrived"] * 2 and photos_first._uploads == 0
