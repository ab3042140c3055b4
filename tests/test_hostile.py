"""Every hostile upload gets a prediction or a plain-language error, directly and through the live app,
and the server answers the next request normally."""

import re
import subprocess
import sys
import urllib.request

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

import app
from classifier import ImageError
from conftest import EXAMPLES, ROOT
from hostile import CATS, blank_png, corpus

CASES = corpus()
TECHNICAL = re.compile(r"Traceback|\b\w*(Error|Exception)\b|upstream Gradio app", re.IGNORECASE)


def assert_plain(message: str) -> None:
    assert message and len(message) < 200, message
    assert not TECHNICAL.search(message), message


def check_answer(case, top: dict[str, float]) -> None:
    assert len(top) == 5, case.name
    probabilities = list(top.values())
    assert probabilities == sorted(probabilities, reverse=True)
    if case.expect_top:
        assert next(iter(top)) in case.expect_top, (case.name, top)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_classifier_answers_every_upload(oracle, case, tmp_path):
    path = tmp_path / case.name
    path.write_bytes(case.data)
    for source in (case.data, path):
        if case.error:
            with pytest.raises(ImageError) as error:
                oracle.predict(source)
            assert case.error in str(error.value)
            assert_plain(str(error.value))
        else:
            check_answer(case, oracle.predict(source))


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_app_answers_every_upload_and_keeps_serving(client, case, tmp_path):
    path = tmp_path / case.name
    path.write_bytes(case.data)
    job = client.submit(handle_file(str(path)), api_name="/predict")
    if case.error:
        with pytest.raises(AppError) as error:
            job.result(timeout=60)
        assert case.error in str(error.value)
        assert_plain(str(error.value))
    else:
        result = job.result(timeout=60)
        check_answer(case, {entry["label"]: entry["confidence"] for entry in result["confidences"]})
    follow_up = client.submit(handle_file(str(EXAMPLES / "cat.jpg")), api_name="/predict").result(timeout=60)
    assert follow_up["label"] in CATS


def test_upload_over_the_size_limit_is_refused_before_processing(server, tmp_path):
    """Gradio's upload route stops reading at max_file_size and answers 413, naming the limit."""
    assert app.MAX_FILE_SIZE == "20mb"
    body = b"\xff\xd8\xff" + bytes(21 * 1024 * 1024)
    boundary = "----hostile-test-boundary"
    payload = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + body
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        server + "gradio_api/upload",
        data=payload,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        method="POST",
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=60)
    assert error.value.code == 413
    assert "maximum allowed size of 20971520 bytes" in error.value.read().decode()


def test_decompression_bomb_is_refused_without_allocating(tmp_path):
    """A 30000×30000 PNG (about 100 KB on disk) would need 900 MB to decode; refusing it must stay cheap."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(blank_png(30000, 30000))
    assert bomb.stat().st_size < 200_000
    script = f"""
import resource, classifier
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    classifier.load_image({str(bomb)!r})
except classifier.ImageError as e:
    print(e)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, "MB")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    message, growth = result.stdout.splitlines()
    assert message == "The image is 900 megapixels; the limit is 50 megapixels."
    assert int(growth.split()[0]) < 50, growth


def test_pixel_limit_is_a_setting(oracle):
    from classifier import Classifier

    strict = Classifier(oracle.model, oracle.labels, transform=oracle.transform, max_pixels=100_000)
    with pytest.raises(ImageError, match="451×300 pixels; the limit is 0.1 megapixels"):
        strict.predict(EXAMPLES / "cat.jpg")
    assert len(oracle.predict(EXAMPLES / "cat.jpg")) == 5
