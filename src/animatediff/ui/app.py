"""The Gradio page: widgets from form.UNITS, callbacks that only translate between widgets and ``Studio``.

Endpoints (``gradio_client``): ``/generate`` (prompt, settings dict -> clip file, info dict) for scripts,
``/generate_form`` (every widget, as the page sends them), ``/cancel``, ``/history``.
"""

from __future__ import annotations

import json
import logging
import os
import random

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no usage reports, no version check: nothing leaves the machine
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402

from ..errors import UserInputError  # noqa: E402
from .form import BUNDLED_DEFAULTS, CONTEXT_AUTO, LONG, MAIN, NONE, PRESET_DEFAULT, SCHEDULER_DEFAULT, UNITS, Widget, preset_values, widgets, windows_text  # noqa: E402
from .jobs import CANCELLED, DONE, QueueFull  # noqa: E402
from .studio import Studio, describe  # noqa: E402

logger = logging.getLogger(__name__)
POLL_SECONDS = 0.25
CSS = "#status textarea {font-family: monospace} #preview img {min-height: 256px; object-fit: contain; image-rendering: pixelated}"


def _make(w: Widget, studio: Studio):
    """One Gradio component for a form widget."""
    common = dict(label=w.label, elem_id=f"w-{w.name}", info=w.info or None)
    if w.kind.startswith("picker:"):
        role = w.kind.split(":", 1)[1]
        labels = list(studio.catalog.entries[role])
        default = studio.catalog.default(role) if role in ("model", "motion_module") else None
        choices = labels if role == "model" else [NONE, *labels]
        return gr.Dropdown(choices=choices, value=default or NONE, **common)
    if w.kind in ("text", "textarea"):
        return gr.Textbox(value=w.default, lines=3 if w.kind == "textarea" else 1, **common)
    if w.kind in ("int", "number"):
        return gr.Number(value=w.default, minimum=w.minimum, maximum=w.maximum, step=w.step, **common)
    if w.kind == "slider":
        return gr.Slider(value=w.default, minimum=w.minimum, maximum=w.maximum, step=w.step, **common)
    if w.kind == "dropdown":
        return gr.Dropdown(choices=list(w.choices), value=w.default, **common)
    if w.kind == "checkbox":
        return gr.Checkbox(value=w.default, label=w.label, elem_id=f"w-{w.name}", info=w.info or None)
    if w.kind == "table":
        return gr.Dataframe(value=w.default, headers=list(w.choices), datatype=["number", "str"], type="array",
                            column_count=len(w.choices), label=w.label, elem_id=f"w-{w.name}")
    if w.kind in ("video", "image"):
        types = [".gif", ".mp4", ".webp", ".webm", ".mov", ".png"] if w.kind == "video" else [".png", ".jpg", ".jpeg", ".webp"]
        return gr.File(file_types=types, label=w.label, elem_id=f"w-{w.name}")
    raise ValueError(f"unknown widget kind {w.kind}")


def _place(unit_widgets, comps: dict, studio: Studio) -> None:
    """Build widgets in order; neighbours with the same ``row`` share a ``gr.Row``."""
    i = 0
    while i < len(unit_widgets):
        w = unit_widgets[i]
        group = [w]
        while w.row and i + len(group) < len(unit_widgets) and unit_widgets[i + len(group)].row == w.row:
            group.append(unit_widgets[i + len(group)])
        if len(group) > 1:
            with gr.Row():
                for g in group:
                    comps[g.name] = _make(g, studio)
        else:
            comps[w.name] = _make(w, studio)
        i += len(group)


def build(studio: Studio) -> gr.Blocks:
    """The page. ``studio`` does all the work; nothing here generates."""
    catalog = studio.catalog
    with gr.Blocks(title="AnimateDiff", analytics_enabled=False) as demo:
        gr.Markdown("## AnimateDiff · text to video")
        comps: dict[str, gr.components.Component] = {}
        with gr.Row():
            with gr.Column(scale=3):
                _place(MAIN.widgets, comps, studio)
                with gr.Row():
                    dice = gr.Button("Random seed", size="sm", elem_id="random-seed")
                    refresh = gr.Button("Refresh model lists", size="sm")
                with gr.Tabs():
                    for unit in UNITS:
                        if unit is MAIN:
                            continue
                        with gr.Tab(unit.title):
                            _place(unit.widgets, comps, studio)
                            if unit is LONG:
                                picture = gr.Markdown(windows_text(16, CONTEXT_AUTO, 0, -1, False), elem_id="windows")
            with gr.Column(scale=2):
                with gr.Row():
                    run = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Cancel", variant="stop", elem_id="cancel")
                status = gr.Textbox(label="Status", interactive=False, elem_id="status", lines=2)
                preview = gr.Image(label="Animation", type="filepath", interactive=False, elem_id="preview")
                video = gr.Video(label="Animation (MP4)", interactive=False, visible=False, elem_id="preview-video")
                files = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")
                with gr.Accordion("History", open=True):
                    gallery = gr.Gallery(label="Past results", columns=4, height=220, elem_id="gallery")
                    past = gr.Dropdown(label="Past result", choices=[], elem_id="past")
                    load = gr.Button("Send settings to the form", elem_id="load-settings")
        order = [comps[w.name] for w in widgets()]

        def history_updates():
            items = studio.outputs.history()
            names = [p.name for p in items]
            shown = [(str(studio.outputs.preview(p)), p.name) for p in items if p.suffix != ".mp4"]
            return gr.update(value=shown), gr.update(choices=names, value=names[0] if names else None)

        def generate_form(request: gr.Request, *values):
            try:
                job = studio.submit_form(list(values), owner=_owner(request))
            except (UserInputError, QueueFull) as e:
                yield describe(e), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
                raise gr.Error(describe(e), print_exception=False) from None
            yield from _follow(job, history_updates)

        def _follow(job, history):
            try:
                while not job.done.wait(POLL_SECONDS):
                    yield studio.status(job), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            finally:
                if not job.done.is_set():  # the page went away: its job is cancelled, not left to run
                    studio.queue.cancel(job.id)
            line = studio.status(job)
            if job.state == DONE:
                out = job.result.path
                mp4 = out.suffix == ".mp4"
                shown = studio.outputs.preview(out)
                yield (line, gr.update(value=None if mp4 else str(shown), visible=not mp4),
                       gr.update(value=str(out) if mp4 else None, visible=mp4), studio.outputs.downloads(out), *history())
            elif job.state == CANCELLED:
                yield line, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            else:
                yield line, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
                raise gr.Error(line, print_exception=False)

        outputs = [status, preview, video, files, gallery, past]
        run.click(generate_form, inputs=order, outputs=outputs, api_name="generate_form", concurrency_limit=None,
                  show_progress="minimal")

        def cancel(request: gr.Request):
            n = studio.queue.cancel_owner(_owner(request))
            return "cancelling..." if n else "nothing to cancel"

        stop.click(cancel, None, status, api_name="cancel", queue=False)

        # the scripted endpoint: generate(prompt, settings) -> (clip, info)
        api_prompt = gr.Textbox(visible=False)
        api_settings = gr.JSON(visible=False)
        api_file = gr.File(visible=False)
        api_info = gr.JSON(visible=False)

        def generate(prompt: str, settings: dict | None, request: gr.Request):
            try:
                job = studio.submit_api(prompt, settings, owner=_owner(request))
            except (UserInputError, QueueFull) as e:
                raise gr.Error(describe(e), print_exception=False) from None
            try:
                job.done.wait()
            finally:
                if not job.done.is_set():
                    studio.queue.cancel(job.id)
            info = {"job": job.id, "state": job.state, "status": studio.status(job)}
            if job.state != DONE:
                raise gr.Error(studio.status(job), print_exception=False)
            # the sidecar as text: its {"path": ...} entries would otherwise be taken for files to download
            info.update(seed=job.result.seed, name=job.result.path.name,
                        sidecar=json.dumps(studio.outputs.sidecar(job.result.path), default=str))
            return studio.outputs.downloads(job.result.path)[0], info

        gr.Button(visible=False).click(generate, [api_prompt, api_settings], [api_file, api_info], api_name="generate",
                                       concurrency_limit=None)

        def load_settings(name):
            try:
                values, notes = studio.settings_of(name)
            except UserInputError as e:
                raise gr.Error(describe(e), print_exception=False) from None
            updates = [gr.update(value=values[w.name]) if w.name in values else gr.skip() for w in widgets()]
            line = f"settings of {name} loaded" + (f" ({'; '.join(notes)})" if notes else "")
            return [*updates, line]

        load.click(load_settings, past, [*order, status], api_name="load_settings", queue=False)
        gr.Button(visible=False).click(lambda: [p.name for p in studio.outputs.history()], None, gr.JSON(visible=False),
                                       api_name="history", queue=False)

        # ---- coupled widgets ----
        dice.click(lambda: random.randrange(2**32), None, comps["seed"], queue=False)

        def preset_changed(preset, model_label, motion_label):
            motion = catalog.entries["motion_module"].get(motion_label)
            model = catalog.entries["model"].get(model_label)
            return preset_values(preset, motion.version if motion else None, bool(model and model.bundled))

        comps["scheduler_preset"].input(preset_changed, [comps["scheduler_preset"], comps["model"], comps["motion_module"]],
                                         [comps["steps"], comps["guidance_scale"], comps["scheduler"]], queue=False)

        def model_changed(model_label):
            entry = catalog.entries["model"].get(model_label)
            side = (BUNDLED_DEFAULTS.get("width", 512) if entry is not None and entry.bundled
                    else 1024 if entry is not None and entry.base == "sdxl" else 512)
            updates = []
            for w in widgets():
                if w.kind.startswith("picker:") and w.name != "model":
                    role = w.kind.split(":", 1)[1]
                    labels = catalog.labels(role, model_label)
                    if role == "motion_module":
                        updates.append(gr.update(choices=[NONE, *labels], value=labels[0] if labels else NONE))
                    else:
                        updates.append(gr.update(choices=[NONE, *labels]))
            return [*updates, side, side]

        pickers = [comps[w.name] for w in widgets() if w.kind.startswith("picker:") and w.name != "model"]
        comps["model"].input(model_changed, comps["model"], [*pickers, comps["width"], comps["height"]], queue=False)

        def refreshed(model_label):
            catalog.refresh()
            return [gr.update(choices=list(catalog.entries["model"])), *model_changed(model_label)[:-2]]

        refresh.click(refreshed, comps["model"], [comps["model"], *pickers], queue=False)

        window_inputs = [comps[n] for n in ("num_frames", "context", "context_length", "context_overlap", "closed_loop")]
        for c in window_inputs:
            c.change(windows_text, window_inputs, picture, queue=False)

        demo.load(history_updates, None, [gallery, past], queue=False)
    return demo


def _owner(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


def launch(studio: Studio, host: str = "127.0.0.1", port: int | None = None, max_upload_bytes: int | None = None,
           block: bool = True) -> gr.Blocks:
    """Serve the page (never a public share link; Gradio's own start-up text, which suggests one, is silenced:
    ``animatediff ui`` logs the address itself). ``block=False`` returns at once (tests: ``demo.local_url``,
    ``demo.close()``)."""
    demo = build(studio)
    demo.queue(max_size=studio.queue.max_queue * 4 + 16, default_concurrency_limit=None)  # ours is the real bound
    demo.launch(server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=not block,
                allowed_paths=[str(studio.outputs.root)], max_file_size=max_upload_bytes, show_error=False,
                quiet=True, ssr_mode=False, mcp_server=False, footer_links=["api"], css=CSS)
    return demo
