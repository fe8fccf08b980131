"""The Gradio UI at "/", mounted on the service's own FastAPI app. Its handlers call
the same worker and the same validation as the HTTP API (never HTTP to ourselves).

Tabs are a table; the batch feature adds its tab with one line in TABS. Never a public
share link: the UI exists only on the service's own port. With server.api_keys set,
Gradio's login form guards it (any user name, an API key as password)."""

import logging

import gradio as gr

from glmtts import text as textlib
from glmtts.errors import GlmttsError

from . import batch_ui, dashboard, ui_synth
from .voices import create_voice

log = logging.getLogger(__name__)


def _voice_pairs(runtime):
    """The Voices tab's dropdown: (shown "name (id)", value id), oldest first."""
    return [("%s (%s)" % (m["name"], m["id"]), m["id"]) for m in runtime.voices.list()]


def _error(e):
    return "**Error:** %s" % e


def admit(runtime, request):
    """The API's per-client rate limit (limits.rate_limit_per_minute), for a UI action that
    costs what its API twin costs. ``request.client`` is the address service/forwarded.py
    resolved, so a UI user and an API caller from one address share one bucket; a refusal
    is a RateLimitError, shown in the status line like any other error."""
    client = getattr(getattr(request, "client", None), "host", None) or "-"
    try:
        runtime.limits.rate.check(client)
    except GlmttsError as e:
        if runtime.metrics is not None:
            runtime.metrics.rejected.labels(e.code).inc()
        raise


def length_hint(runtime, text):
    """The hint under the text box: chunking and the request limit."""
    text = text or ""
    limit = runtime.settings.limits.max_text_chars
    if len(text) > limit:
        return "⚠ %d characters: over the limit of %d. Split the text into several requests (or use a batch)." % (
            len(text), limit)
    chunks = len(textlib.split_text(text, runtime.settings.engine.max_chunk_chars)) if text.strip() else 0
    if chunks > 8:
        return ("%d characters, %d chunks: long text. Consider splitting it into several requests (or a batch) "
                "so each result arrives sooner." % (len(text), chunks))
    return "%d characters, %d chunk(s)." % (len(text), chunks) if text else ""


def voices_tab(runtime):
    def table():
        return [[m["id"], m["name"], m["prompt_text"], m["duration_s"]] for m in runtime.voices.list()]

    # value=table (the function): Gradio calls it on every page load, so the list is current
    listing = gr.Dataframe(value=table, headers=["id", "name", "prompt text", "seconds"], interactive=False)
    with gr.Row():
        name = gr.Textbox(label="Name")
        ref = gr.Audio(sources=["upload"], type="filepath", label="Reference audio")
        ptext = gr.Textbox(label="Transcript")
    add = gr.Button("Save voice")
    with gr.Row():
        # (label, value): the name shown, the id used (names may be renamed; ids never change).
        # Its choices are refreshed whenever it is opened (focus), so a voice saved since the
        # page loaded (here, through the API, in another tab) is there; allow_custom_value:
        # Gradio would otherwise check a value against the choices the page was built with,
        # and the store checks the id anyway (404 naming it).
        which = gr.Dropdown(_voice_pairs(runtime), label="Voice", elem_id="voices-which", allow_custom_value=True)
        new_name = gr.Textbox(label="New name", elem_id="voices-new-name")
        rename = gr.Button("Rename voice")
        remove = gr.Button("Delete voice", variant="stop")
    status = gr.Markdown(elem_id="voices-status")

    def do_add(n, path, t, request: gr.Request):
        try:
            admit(runtime, request)  # POST /v1/voices is rate limited: saving one here is too
            if not path:
                raise GlmttsError("upload a reference recording first")
            with open(path, "rb") as f:
                meta = create_voice(runtime, name=n, prompt_text=t, data=f.read())
            msg = "Saved voice %s (%s)." % (meta["name"], meta["id"])
        except GlmttsError as e:
            msg = _error(e)
        return table(), gr.update(choices=_voice_pairs(runtime)), msg

    def do_rename(voice_id, n):
        try:
            if not voice_id:
                raise GlmttsError("pick the voice to rename first")
            meta = runtime.voices.rename(voice_id, n or "")  # the API's rule: unique, case-insensitively
            msg = "Renamed %s to %s." % (meta["id"], meta["name"])
        except GlmttsError as e:
            return table(), gr.update(choices=_voice_pairs(runtime)), gr.update(), _error(e)
        return table(), gr.update(choices=_voice_pairs(runtime), value=voice_id), "", msg

    def do_remove(voice_id):
        try:
            if not voice_id:
                raise GlmttsError("pick the voice to delete first")
            runtime.voices.delete(voice_id)
            msg = "Deleted %s." % voice_id
        except GlmttsError as e:
            msg = _error(e)
        return table(), gr.update(choices=_voice_pairs(runtime), value=None), msg

    add.click(do_add, inputs=[name, ref, ptext], outputs=[listing, which, status], api_name="save_voice")
    rename.click(do_rename, inputs=[which, new_name], outputs=[listing, which, new_name, status],
                 api_name="rename_voice")
    remove.click(do_remove, inputs=which, outputs=[listing, which, status], api_name="delete_voice")
    which.focus(lambda: gr.update(choices=_voice_pairs(runtime)), outputs=which, api_visibility="private",
                show_progress="hidden")
    return listing


# title -> builder(runtime); the batch UI adds ("Batch", batch_ui.build) here.
# Synthesize: service/ui_synth.py; System (the operator's dashboard): service/dashboard.py.
TABS = [("Synthesize", ui_synth.synthesize_tab), ("Voices", voices_tab), ("System", dashboard.system_tab)]
TABS.insert(2, ("Batch", batch_ui.build))


def build(runtime):
    engine = runtime.engine.describe()
    with gr.Blocks(title="glmtts") as demo:
        gr.Markdown("## glmtts · engine **%s** (%s)" % (runtime.settings.engine.name, engine.get("device", "cpu")))
        built = {}
        for title, builder in TABS:
            with gr.Tab(title):
                built[title] = builder(runtime)
        if "Synthesize" in built:
            refresh = lambda: ui_synth.refresh_choices(runtime)  # noqa: E731
            demo.load(refresh, outputs=built["Synthesize"], api_visibility="private", show_progress="hidden")
            if "Voices" in built:
                # a save, rename or delete on the Voices tab changes its table: the Synthesize
                # dropdown follows at once, without a page reload
                built["Voices"].change(refresh, outputs=built["Synthesize"], api_visibility="private",
                                       show_progress="hidden")
    return demo


def build_app(runtime):
    """The Gradio UI as an ASGI app: (shell, app). Mounted on a FastAPI shell of its own, not
    on the service's app, because it is built after the service is already serving (see
    uigate.py); the shell carries Gradio's lifespan, which UiGate.open runs."""
    from fastapi import FastAPI

    demo = build(runtime)
    auth = (lambda user, password: runtime.limits.key_ok(password or "")) if runtime.limits.keys else None
    shell = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    gr.mount_gradio_app(shell, demo, path="/", auth=auth, ssr_mode=False, show_error=True,
                        max_file_size="%dmb" % max(1, int(runtime.settings.limits.max_upload_mb)),
                        footer_links=["api"])
    app = shell.routes[-1].app
    dashboard.add_routes(app, runtime)  # the runbook links of the System tab
    return shell, app
