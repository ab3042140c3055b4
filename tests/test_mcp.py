"""`python app.py --mcp`: the API as Model Context Protocol tools, called the way an AI agent calls them
(the `mcp` Python client over streamable HTTP)."""

import ast
import asyncio
import base64

import pytest
from gradio_client import Client, handle_file
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

import app
from conftest import EXAMPLES, EXPECTED
from servers import free_port


@pytest.fixture(scope="module")
def mcp_server(models):
    demo = app.build_demo(models)
    port = free_port()
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        mcp_server=True,
        **app.launch_options(),
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


async def call_tools(url: str, calls: list[tuple[str, dict]]):
    """The tools the server lists, and each call's result."""
    async with (
        streamable_http_client(f"{url}gradio_api/mcp/") as (read, write, *_),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
        results = [await asyncio.wait_for(session.call_tool(name, args), 120) for name, args in calls]
    return tools, results


def test_the_mcp_tools_classify_a_photo_sent_as_a_data_url_as_predict_does(mcp_server, models):
    photo = EXAMPLES / "cat.jpg"
    data_url = "data:image/jpeg;base64," + base64.b64encode(photo.read_bytes()).decode()
    tools, (classified, listed) = asyncio.run(
        call_tools(
            mcp_server,
            [("classify", {"image": data_url, "model": models.default}), ("models", {})],
        )
    )
    assert {"predict", "classify", "explain", "compare", "models"} <= set(tools)
    page_events = {"show_photo", "choose_model", "classify_frame", "classify_many", "compare_on_page"}
    assert not page_events & set(tools)
    classify = tools["classify"]
    assert "five best guesses" in classify.description
    assert set(classify.inputSchema["properties"]) == {"image", "model"}
    model = classify.inputSchema["properties"]["model"]
    assert "one of those the `models` tool lists" in model["description"]

    assert not classified.isError, classified.content
    answer = ast.literal_eval(classified.content[0].text)  # the label value, as Gradio writes it
    expected = Client(mcp_server, verbose=False).predict(handle_file(str(photo)), api_name="/predict")
    assert answer == expected and answer["label"] in EXPECTED["cat.jpg"]

    figures = ast.literal_eval(listed.content[0].text)
    assert [row["name"] for row in figures] == models.names and figures[0]["default"] is True
    resnet = next(row for row in figures if row["name"] == "resnet18")
    assert resnet["imagenet_top1_percent"] == pytest.approx(69.758)
