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
    (bars,) = [c for c in components if isinstance(c, gr.Label) and c.elem_id != "live-bars"]
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


def test_the_page_names_the_model_and_its_engine(oracle):
    import gradio as gr

    demo = app.build_demo(oracle, model_name="EfficientNet-Lite0")
    texts = [c.value for c in demo.blocks.values() if isinstance(c, gr.Markdown)]
    card = f"Model: EfficientNet-Lite0. Engine: {oracle.engine_choice.describe()}."
    assert card in texts
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
