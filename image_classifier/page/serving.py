"""The page as a Ray Serve replica builds it (`python app.py --serve`): around the models on the model
replicas (`image_classifier.ray_serve.RemoteModels`), with /healthz, /readyz and /metrics, mounted on a
FastAPI app that Serve's HTTP proxy sends every request to."""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI

from image_classifier.live import PhotosFirst
from image_classifier.metrics import PageMetrics, health_routes, loaded_models

from .demo import build_demo
from .server import mounted
from .settings import MAX_FILE_SIZE


def serve_page(models, *, max_file_size: str = MAX_FILE_SIZE, **page_options) -> FastAPI:
    """The page around `models` (a `RemoteModels`), ready for `serve.ingress`; `page_options` go to
    `build_demo` (the limits, the queue, `concurrency`, `max_pixels`)."""
    metrics = PageMetrics(models.names, models=loaded_models(models), refusals=(gr.Error,))
    photos_first = PhotosFirst()  # live frames give way to photos from their upload on
    demo = build_demo(models, metrics=metrics, photos_first=photos_first, **page_options)
    return mounted(demo, health_routes(metrics, models.not_ready), max_file_size, photos_first)
