"""The Many photos tab: up to `max_batch_files` photos at once, a row each in a table, and the table as a
CSV file, by the model chosen on the Photo tab."""

from __future__ import annotations

import tempfile

import gradio as gr

from image_classifier import batch

from .answers import Answers
from .settings import PAGE_ONLY, Limits


def many_tab(answers: Answers, chosen: gr.State, limits: Limits) -> None:
    """The Many photos tab, its upload wired."""
    several = len(answers.models.names) > 1
    with gr.Tab("Many photos"):
        gr.Markdown(
            f"Choose up to {limits.max_batch_files} photos at once: each gets a row, and the table comes as "
            "a CSV file too." + (" The model is the one chosen on the Photo tab." if several else "")
        )
        many = gr.UploadButton(
            "Choose photos", file_count="multiple", file_types=["image"], variant="primary"
        )
        table = gr.Dataframe(
            headers=batch.TABLE_HEADERS,
            interactive=False,
            wrap=True,
            label="Results",
            max_height=600,
            column_widths=["14%", "14%", "10%", "37%", "25%"],
        )
        download = gr.DownloadButton("Download CSV", visible=False)

    def classify_many(files: list[str] | None, name: str, progress=gr.Progress()):  # noqa: B008 (Gradio's idiom)
        """A row per file (bad ones with their error) and the same table as a CSV. A generator so that the
        CSV's folder goes once Gradio has copied the file into its cache (its cleanup deletes the copy)."""
        with tempfile.TemporaryDirectory(prefix="many-photos-") as folder:
            with answers.metered("many", name):
                try:
                    rows, csv_path = batch.classify_uploads(
                        answers.classifier(name),
                        files or [],
                        max_files=limits.max_batch_files,
                        top_k=answers.top_k,
                        progress=lambda done, total: progress((done, total), unit="photos"),
                        folder=folder,
                    )
                except ValueError as e:  # none, or too many: in plain words
                    raise gr.Error(str(e), print_exception=False) from None
            yield rows, gr.DownloadButton(value=csv_path, visible=True)

    many.upload(classify_many, [many, chosen], [table, download], concurrency_limit=1, **PAGE_ONLY)
