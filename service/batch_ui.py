"""The UI's Batch tab: upload a JSONL file, see the validation report, follow the
progress bar, download the zip when the job is finished, cancel. Handlers call the
same BatchService as /v1/batches (never HTTP to ourselves)."""

import html
import logging
import os
import tempfile

import gradio as gr

from glmtts.batch import states
from glmtts.batch.archive import iter_zip
from glmtts.errors import GlmttsError

log = logging.getLogger(__name__)

REFRESH_S = 2.0
ZIP_DIR = os.path.join(tempfile.gettempdir(), "glmtts-batch-ui")


def _choices(service):
    return ["%s  (%s)" % (j.id, os.path.basename(j.state.get("source") or "upload")) for j in reversed(service.store.list())][:50]


def _job_id(choice):
    return (choice or "").split("  (", 1)[0].strip()


def progress_html(summary):
    p = summary["progress"]
    finished = p["total"] - p["pending"]
    lines = ['<div id="batch-progress-box"><b>%s</b> — %s%s<br>' % (
        html.escape(summary["id"]), html.escape(summary["state"]),
        (" (%s)" % html.escape(summary["reason"])) if summary.get("reason") else ""),
        '<progress max="%d" value="%d" style="width:100%%"></progress><br>' % (p["total"], finished),
        '<span id="batch-counts">%d/%d finished (%.0f%%): %d done, %d failed</span>' % (
            finished, p["total"], p["percent"], p["done"], p["failed"])]
    if summary["failures"]:
        lines.append("<ul>")
        for f in summary["failures"][:20]:
            lines.append("<li>line %s (%s): %s</li>" % (f["line"], html.escape(str(f["output_name"])),
                                                        html.escape(f["reason"])))
        if len(summary["failures"]) > 20:
            lines.append("<li>… %d more in the manifest</li>" % (len(summary["failures"]) - 20))
        lines.append("</ul>")
    lines.append("</div>")
    return "".join(lines)


def _zip_path(job):
    """Build the job's zip once it is finished (cached per job in the temp dir)."""
    os.makedirs(ZIP_DIR, exist_ok=True)
    path = os.path.join(ZIP_DIR, "batch-%s.zip" % job.id)
    if not os.path.exists(path):
        tmp = path + ".part"
        with open(tmp, "wb") as f:
            for chunk in iter_zip(job):
                f.write(chunk)
        os.replace(tmp, path)
    return path


def build(runtime):
    service = runtime.batches
    s = runtime.settings
    gr.Markdown("One task per line: `{\"prompt_audio\": \"voices/a.wav\", \"prompt_text\": \"...\", "
                "\"input_text\": \"...\", \"output_name\": \"ch01_001\"}`; `prompt_audio` is relative to the "
                "prompt root `%s`. The file is validated before any work; jobs survive restarts." % s.paths.prompt_root)
    with gr.Row():
        with gr.Column():
            upload = gr.File(label="Batch file (JSONL)", file_types=[".jsonl", ".json", ".txt"], type="filepath",
                             elem_id="batch-file")
            skip = gr.Checkbox(False, label="Skip invalid lines and run the valid ones")
            submit = gr.Button("Validate and start", variant="primary", elem_id="batch-submit")
            report = gr.Markdown(elem_id="batch-report")
        with gr.Column():
            job = gr.Dropdown(_choices(service), label="Job", elem_id="batch-job", allow_custom_value=True)
            progress = gr.HTML(elem_id="batch-progress")
            with gr.Row():
                cancel = gr.Button("Cancel job", variant="stop", elem_id="batch-cancel")
                download = gr.DownloadButton("Download zip", interactive=False, elem_id="batch-download")
    timer = gr.Timer(REFRESH_S)

    def do_submit(path, skip_invalid):
        if not path:
            return "**Error:** choose a batch file first", gr.update()
        try:
            with open(path, "rb") as f:
                data = f.read()
            new, rep = service.submit(data, os.path.basename(path), bool(skip_invalid))
        except (GlmttsError, OSError) as e:
            return "**Error:** %s" % e, gr.update()
        text = "```\n%s\n```" % rep.format_text()
        if new is None:
            return "**Not started: the file has errors.**\n\n" + text, gr.update()
        return ("**Started job %s** (%d tasks).\n\n" % (new.id, new.state["tasks"])) + text, \
            gr.update(choices=_choices(service), value=_choices(service)[0])

    def do_refresh(choice):
        job_id = _job_id(choice)
        if not job_id:
            return "", gr.update(interactive=False, value=None)
        try:
            j = service.store.get(job_id)
            summary = j.summary()
            ready = j.status in states.FINISHED and summary["progress"]["done"] > 0
            return progress_html(summary), gr.update(interactive=ready, value=_zip_path(j) if ready else None)
        except GlmttsError as e:
            return "<b>%s</b>" % html.escape(str(e)), gr.update(interactive=False, value=None)
        except OSError as e:
            log.warning("batch UI: cannot show job %s: %s", job_id, e)
            return "<b>cannot read job %s: %s</b>" % (html.escape(job_id), html.escape(str(e))), gr.update()

    def do_cancel(choice):
        try:
            if _job_id(choice):
                service.cancel(_job_id(choice))
        except GlmttsError as e:
            log.info("batch UI: cancel failed: %s", e)
        return do_refresh(choice)

    submit.click(do_submit, inputs=[upload, skip], outputs=[report, job]).then(
        do_refresh, inputs=job, outputs=[progress, download])
    job.change(do_refresh, inputs=job, outputs=[progress, download])
    timer.tick(do_refresh, inputs=job, outputs=[progress, download])
    cancel.click(do_cancel, inputs=job, outputs=[progress, download])
    return job
