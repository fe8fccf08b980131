"""The UI's Batch tab: upload reference audio into the prompt root, upload a JSONL file,
see the validation report, follow the progress bar, listen to the outputs, download the
zip when the job is finished, cancel. Handlers call the same BatchService as
/v1/batches (never HTTP to ourselves)."""

import html
import logging
import os
import re
import secrets
import shutil
import tempfile

import gradio as gr

from glmtts import audio as audiolib
from glmtts.batch import states
from glmtts.batch.archive import iter_zip
from glmtts.batch.schema import file_formats
from glmtts.errors import GlmttsError

from .access import quiet_poll

log = logging.getLogger(__name__)

REFRESH_S = 2.0         # the timer while the job shown can still change (queued, running, paused)
IDLE_REFRESH_S = 60.0   # otherwise: a forgotten tab costs one request a minute, not 43,200 a day
# A reference's file name in the prompt root: what a batch line's prompt_audio names.
_REF_NAME = re.compile(r"[^\W_][\w.\-]{0,118}", re.UNICODE)


def zip_dir():
    # Looked up at each use: the service points tempfile at <state_dir>/cache/tmp
    # (glmtts/cachedir.py), which prunes it with the outputs' retention.
    return os.path.join(tempfile.gettempdir(), "glmtts-batch-ui")


def _choices(service):
    return ["%s  (%s)" % (j.id, os.path.basename(j.state.get("source") or "upload")) for j in reversed(service.store.list())][:50]


def _pace(service, choice):
    """The Batch tab's poll interval: fast only while the job shown can still change."""
    job_id = _job_id(choice)
    try:
        return REFRESH_S if job_id and service.store.get(job_id).status in states.RESUMABLE else IDLE_REFRESH_S
    except (GlmttsError, OSError):
        return IDLE_REFRESH_S


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
    os.makedirs(zip_dir(), exist_ok=True)
    path = os.path.join(zip_dir(), "batch-%s.zip" % job.id)
    if not os.path.exists(path):
        tmp = path + ".part"
        with open(tmp, "wb") as f:
            for chunk in iter_zip(job):
                f.write(chunk)
        os.replace(tmp, path)
    return path


def _play_copy(job, name):
    """A copy of one output for the player, where gradio may serve files from (the temp
    dir; the outputs directory is not one). The file as it is, in its own format: the
    browser decodes mp3/opus/aac itself, and the user hears what the job wrote."""
    src = os.path.join(job.out_dir, name)
    folder = os.path.join(zip_dir(), job.id)
    os.makedirs(folder, exist_ok=True)
    dest = os.path.join(folder, name)
    if not os.path.exists(dest) or os.path.getsize(dest) != os.path.getsize(src):
        tmp = "%s.%s.part" % (dest, secrets.token_hex(4))
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    return dest


def report_html(text):
    """The validation report, wrapped (never a sideways scroll that hides what to fix)."""
    return ('<pre class="batch-report-text" style="white-space: pre-wrap; overflow-wrap: anywhere; '
            'word-break: break-word; overflow-x: hidden; margin: 0">%s</pre>' % html.escape(text))


def save_references(settings, paths):
    """Copy uploaded reference files into paths.prompt_root after checking their content
    exactly as POST /v1/audio/speech checks prompt_audio. Returns (saved names, error
    lines); a bad file is never written, the good ones are."""
    root = settings.paths.prompt_root
    limit = int(settings.limits.max_upload_mb * 1024 * 1024)
    saved, errors = [], []
    for path in paths or []:
        name = os.path.basename(path)
        if not _REF_NAME.fullmatch(name) or ".." in name:
            errors.append("%s: not a usable file name in the prompt root: use letters, digits, '_', '-' and '.', "
                          "starting with a letter or digit (rename the file and upload it again)" % name)
            continue
        try:
            size = os.path.getsize(path)
            if size > limit:
                errors.append("%s: %.1f MB; the limit is %g MB (limits.max_upload_mb)" % (
                    name, size / 1048576.0, settings.limits.max_upload_mb))
                continue
            with open(path, "rb") as f:
                data = f.read()
            audiolib.decode_reference(data, settings.limits, what="prompt_audio")
        except GlmttsError as e:
            errors.append("%s: %s" % (name, e))
            continue
        except OSError as e:
            errors.append("%s: cannot read the upload: %s" % (name, e.strerror or e))
            continue
        dest = os.path.join(root, name)
        try:
            os.makedirs(root, exist_ok=True)
            if os.path.exists(dest):
                with open(dest, "rb") as f:
                    same = f.read() == data
                if not same:
                    # A queued job may use the file under this name: never swap it under it.
                    errors.append("%s: a different file of this name is already in the prompt root (%s); rename your "
                                  "file and upload it again" % (name, root))
                    continue
            else:
                tmp = os.path.join(root, ".%s.%s.part" % (name, secrets.token_hex(4)))
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                try:
                    os.link(tmp, dest)  # no-clobber: a file that appeared meanwhile is kept
                except FileExistsError:
                    errors.append("%s: a file of this name appeared in the prompt root meanwhile; upload it again "
                                  "under another name" % name)
                    continue
                finally:
                    os.unlink(tmp)
        except OSError as e:
            errors.append("%s: cannot write into the prompt root %s: %s" % (name, root, e.strerror or e))
            continue
        saved.append(name)
    return saved, errors


def references_html(saved, errors):
    out = []
    if errors:
        out.append('<div class="batch-refs-errors"><b>Not saved:</b><ul>%s</ul></div>' % "".join(
            "<li>Error: %s</li>" % html.escape(e) for e in errors))
    if saved:
        out.append('<div class="batch-refs-saved"><b>Saved in the prompt root:</b> %s. Use them as '
                   '<code>"prompt_audio": "%s"</code> with their transcript as <code>prompt_text</code>.</div>' % (
                       ", ".join(html.escape(n) for n in saved), html.escape(saved[0])))
    return "".join(out) or "choose one or more reference audio files first"


def output_choices(job):
    """The finished outputs of a job, in task order (what the player can play)."""
    progress = job.progress()
    return [progress.done[i]["file"] for i in sorted(progress.done) if progress.done[i].get("file")]


def cancel_message(job, before):
    """What a click on Cancel did, in words (a finished job cannot be cancelled)."""
    if before in states.FINISHED:
        return "Job %s is already %s: there is nothing to cancel." % (job.id, "finished" if before == states.DONE
                                                                      else before)
    if job.status == states.CANCELLED:
        return "Job %s cancelled." % job.id
    return "Job %s: cancellation requested; it stops after the task in progress." % job.id


def build(runtime):
    service = runtime.batches
    s = runtime.settings
    gr.Markdown("One task per line: `{\"prompt_audio\": \"voices/a.wav\", \"prompt_text\": \"...\", "
                "\"input_text\": \"...\", \"output_name\": \"ch01_001\"}`; `prompt_audio` is relative to the "
                "prompt root `%s`. Instead of a reference file a line may name a saved voice (`\"voice\": "
                "\"voice_...\"`) or `\"voice\": \"default\"`; optional: `speed` (0.25-4.0), `response_format` "
                "(%s), `sample_rate`, `seed`. The file is validated before any work; jobs survive restarts."
                % (s.paths.prompt_root, ", ".join(file_formats())))
    with gr.Row():
        with gr.Column():
            refs = gr.File(label="Reference audio for this batch (saved into the prompt root)", file_count="multiple",
                           type="filepath", elem_id="batch-refs")
            refs_save = gr.Button("Upload references", elem_id="batch-refs-save")
            refs_status = gr.HTML(elem_id="batch-refs-status")
            upload = gr.File(label="Batch file (JSONL)", file_types=[".jsonl", ".json", ".txt"], type="filepath",
                             elem_id="batch-file")
            skip = gr.Checkbox(False, label="Skip invalid lines and run the valid ones")
            submit = gr.Button("Validate and start", variant="primary", elem_id="batch-submit")
            report = gr.HTML(elem_id="batch-report")
        with gr.Column():
            job = gr.Dropdown(_choices(service), label="Job", elem_id="batch-job", allow_custom_value=True)
            progress = gr.HTML(elem_id="batch-progress")
            with gr.Row():
                cancel = gr.Button("Cancel job", variant="stop", elem_id="batch-cancel")
                download = gr.DownloadButton("Download zip", interactive=False, elem_id="batch-download")
            cancel_status = gr.HTML(elem_id="batch-cancel-status")
            output = gr.Dropdown([], label="Output to play", elem_id="batch-output", allow_custom_value=False)
            player = gr.Audio(label="Output", type="filepath", interactive=False, elem_id="batch-player")
    timer = gr.Timer(REFRESH_S)

    def do_save_refs(paths):
        if not paths:
            return "<b>Error:</b> choose one or more reference audio files first"
        saved, errors = save_references(s, paths if isinstance(paths, list) else [paths])
        return references_html(saved, errors)

    def do_submit(path, skip_invalid):
        if not path:
            return "<b>Error:</b> choose a batch file first", gr.update()
        try:
            with open(path, "rb") as f:
                data = f.read()
            new, rep = service.submit(data, os.path.basename(path), bool(skip_invalid))
        except (GlmttsError, OSError) as e:
            return "<b>Error:</b> %s" % html.escape(str(e)), gr.update()
        text = report_html(rep.format_text())
        if new is None:
            return "<p><b>Not started: the file has errors.</b></p>" + text, gr.update()
        return ("<p><b>Started job %s</b> (%d tasks).</p>" % (html.escape(new.id), new.state["tasks"])) + text, \
            gr.update(choices=_choices(service), value=_choices(service)[0])

    def do_refresh(choice, current=None):
        job_id = _job_id(choice)
        if not job_id:
            return "", gr.update(interactive=False, value=None), gr.update(choices=[], value=None)
        try:
            j = service.store.get(job_id)
            summary = j.summary()
            ready = j.status in states.FINISHED and summary["progress"]["done"] > 0
            names = output_choices(j)
            # keep the user's pick while the list grows; the first output once there is one
            pick = current if current in names else (names[0] if names else None)
            return progress_html(summary), gr.update(interactive=ready, value=_zip_path(j) if ready else None), \
                gr.update(choices=names, value=pick)
        except GlmttsError as e:
            return "<b>%s</b>" % html.escape(str(e)), gr.update(interactive=False, value=None), \
                gr.update(choices=[], value=None)
        except OSError as e:
            log.warning("batch UI: cannot show job %s: %s", job_id, e)
            return "<b>cannot read job %s: %s</b>" % (html.escape(job_id), html.escape(str(e))), gr.update(), \
                gr.update()

    def do_play(choice, name):
        job_id = _job_id(choice)
        if not job_id or not name:
            return None
        try:
            j = service.store.get(job_id)
            if name not in output_choices(j):
                return None
            return _play_copy(j, name)
        except (GlmttsError, OSError) as e:
            raise gr.Error("cannot play %s: %s" % (name, e))

    def do_cancel(choice):
        job_id = _job_id(choice)
        if not job_id:
            return ("<b>Error:</b> choose a job first",) + do_refresh(choice)
        try:
            before = service.store.get(job_id).status
            j = service.cancel(job_id)
            message = cancel_message(j, before)
        except GlmttsError as e:
            message = "Error: %s" % e
        return ("<b>%s</b>" % html.escape(message),) + do_refresh(choice)

    refs_save.click(do_save_refs, inputs=refs, outputs=refs_status, api_name="batch_upload_references")
    submit.click(do_submit, inputs=[upload, skip], outputs=[report, job]).then(
        do_refresh, inputs=[job, output], outputs=[progress, download, output])
    job.change(lambda choice: ("",) + do_refresh(choice), inputs=job,
               outputs=[cancel_status, progress, download, output])
    def tick(choice, current):
        return do_refresh(choice, current) + (gr.Timer(value=_pace(service, choice)),)

    # UI polling: counted in /metrics, no access line per tick (service/access.py quiet_poll)
    quiet_poll(timer.tick(tick, inputs=[job, output], outputs=[progress, download, output, timer], queue=False,
                          api_visibility="private", show_progress="hidden"))
    job.change(lambda choice: gr.Timer(value=_pace(service, choice)), inputs=job, outputs=timer, queue=False,
               api_visibility="private", show_progress="hidden")
    cancel.click(do_cancel, inputs=job, outputs=[cancel_status, progress, download, output], api_name="batch_cancel")
    output.change(do_play, inputs=[job, output], outputs=player)
    return job
