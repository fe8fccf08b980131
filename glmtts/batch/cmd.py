"""`glmtts batch`: validate, run (and resume), status, list, cancel, prune.

Imports of the engine and numpy happen inside the verbs so `glmtts --help` stays fast.
"""

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time

from ..errors import EXIT_FAILURE, EXIT_OK, InputError

EXIT_INTERRUPTED = 130

HELP = """Batch synthesis from a JSONL file, one task per line:
  {"prompt_audio": "voices/anna.wav", "prompt_text": "...", "input_text": "...", "output_name": "ch01_001"}
  {"voice": "voice_0123456789ab", "input_text": "...", "output_name": "ch01_002", "speed": 1.2}
  {"input_text": "...", "output_name": "ch01_003", "response_format": "mp3"}
The voice: prompt_audio (relative to paths.prompt_root) with its prompt_text, or "voice": a
saved voice's id or name, or "default" (also what a line without either gets). The official
GLM-TTS names prompt_speech / syn_text / uttid work too; optional: sample_rate, seed, speed
(0.25..4.0), response_format (the output file's format and extension; default wav).

`batch run` submits the file to the running service (watchdog.url) and follows it; only
with --local does it load an engine in this process. Jobs are durable: a service job
survives restarts of the service; a --local job resumes when the same command is run again
after a crash or Ctrl-C, producing every output exactly once."""


def add_parser(sub):
    p = sub.add_parser("batch", help="validate and run JSONL batch jobs (durable, resumable)", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    v = verbs.add_parser("validate", help="check a batch file without synthesizing anything (exit 1 on any error)")
    v.add_argument("file", help="JSONL batch file")
    v.add_argument("--json", action="store_true", help="print the report as JSON")
    v.set_defaults(func=cmd_validate)

    r = verbs.add_parser("run", help="run a batch file on the running service (or in this process with --local)",
                         description="Submit FILE to the running service (watchdog.url, authenticated with "
                                     "watchdog.api_key or the first of server.api_keys), follow its progress and, "
                                     "with --out, download the outputs into DIR. The service validates the file "
                                     "first and runs nothing if it has errors. Ctrl-C stops following, not the job. "
                                     "With --local: validate FILE, load the engine in this process and synthesize "
                                     "into DIR; an unfinished --local job for the same file and DIR is resumed, not "
                                     "restarted.")
    r.add_argument("file", help="JSONL batch file")
    r.add_argument("--out", metavar="DIR",
                   help="output directory (default: <paths.output_dir>/<job id>, where the service writes them)")
    r.add_argument("--local", action="store_true",
                   help="load the engine in this process instead of submitting to the service (on a GPU server: "
                        "a second copy of the model beside a running service may not fit in GPU memory)")
    r.add_argument("--skip-invalid", action="store_true",
                   help="run the valid lines; the invalid ones are listed in the job as skipped (default: refuse to start)")
    r.add_argument("--new", action="store_true",
                   help="with --local: start a new job even if this file already ran into DIR")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)

    s = verbs.add_parser("status", help="progress and failed tasks of one job")
    s.add_argument("job", help="job id (see `glmtts batch list`)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    ls = verbs.add_parser("list", help="all jobs with their state and progress")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    c = verbs.add_parser("cancel", help="cancel a job (a running one stops after its current task)")
    c.add_argument("job")
    c.set_defaults(func=cmd_cancel)

    pr = verbs.add_parser("prune", help="delete finished jobs and their outputs older than batch.retention_days "
                                        "(and the UI's cached uploads and results under paths.state_dir/cache)")
    pr.add_argument("--older-than", metavar="DAYS", type=float, help="override batch.retention_days")
    pr.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_prune)


def _settings(args):
    from .. import config
    return config.load(getattr(args, "config", None))


def _setup_logging():
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _require_file(path):
    """A batch file that is not there is one usage error (the CLI prints it on one line,
    exit 2), not a report of "0 of 0 lines valid"."""
    if os.path.isdir(path):
        raise InputError("%s is a directory, not a batch file" % path)
    if not os.path.isfile(path):
        raise InputError("batch file %s does not exist" % path)
    if not os.access(path, os.R_OK):
        raise InputError("batch file %s is not readable by this user" % path)


def cmd_validate(args):
    from .validate import validate_file
    _require_file(args.file)
    report = validate_file(args.file, _settings(args))
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, indent=1))
    else:
        print(report.format_text())
    return EXIT_OK if report.ok else EXIT_FAILURE


def cmd_run(args):
    from .. import engines
    from .runner import EngineSynthesizer, Runner
    from .store import JobStore, file_sha256
    from .validate import validate_file
    from . import states

    _setup_logging()
    settings = _settings(args)
    store = JobStore(settings)
    if not os.path.isfile(args.file):
        print("glmtts batch run: error: batch file %s does not exist" % args.file, file=sys.stderr)
        return EXIT_FAILURE
    if not getattr(args, "local", False):
        return _run_on_service(args, settings)
    _warn_if_gpu()
    job = None if args.new else store.find_latest(file_sha256(args.file), args.out)
    if job is not None and job.status in states.FINISHED:
        print("job %s already ran this file into %s (%s); use --new to run it again" % (
            job.id, job.out_dir, job.status), file=sys.stderr)
        return _print_result(job.summary())
    if job is None:
        report = validate_file(args.file, settings)
        if not report.ok:
            print(report.format_text(), file=sys.stderr)
            if not args.skip_invalid or not report.tasks:
                return EXIT_FAILURE
        job = store.create(args.file, report, source=os.path.abspath(args.file), out_dir=args.out,
                           skip_invalid=args.skip_invalid)
        print("job %s: %d tasks -> %s" % (job.id, job.state["tasks"], job.out_dir), file=sys.stderr)
    else:
        p = job.progress()
        print("job %s: resuming, %d of %d tasks already finished -> %s" % (
            job.id, p.total - p.pending, p.total, job.out_dir), file=sys.stderr)

    stop = threading.Event()
    # Signal handlers only record the request; the runner stops after the current task.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    engine = engines.create(settings)
    engine.load()
    bar = None if args.quiet else ProgressBar(sys.stderr)
    summary = Runner(job, EngineSynthesizer(engine), settings, stop=stop,
                     on_progress=bar.update if bar else None).run()
    if bar:
        bar.close()
    if stop.is_set() and summary["status"] not in states.FINISHED:
        print("stopped: job %s is resumable, run the same command again" % job.id, file=sys.stderr)
        return EXIT_INTERRUPTED
    return _print_result(summary)


def _warn_if_gpu():
    """--local beside a service on the same GPU is two model copies: say so first."""
    from .. import gpu
    try:
        status = gpu.nvml_status()
    except Exception:  # a broken driver must not stop a CPU run; the engine says more
        return
    if status.get("available"):
        names = ", ".join("%s (%d MB free)" % (d["name"], d["free_mb"]) for d in status["devices"])
        print("warning: --local loads the engine in this process and NVML sees a GPU here (%s): if the glmtts "
              "service runs on it, this is a second copy of the model and may not fit in GPU memory (CUDA out of "
              "memory). Without --local the job runs in the service instead." % names, file=sys.stderr)


def _run_on_service(args, settings):
    """Submit to the running service and follow it (the default; see client.py)."""
    from ..errors import GlmttsError
    from .client import BatchClient
    from . import states

    client = BatchClient(settings)
    if not client.answers():
        print("glmtts batch run: error: no glmtts service answers at %s (watchdog.url; from server.host/port "
              "unless set): start the service (`glmtts serve`, or `systemctl start glmtts`) and run this again, or "
              "add --local to load the engine in this process instead (on a GPU server only while the service is "
              "stopped)" % client.url, file=sys.stderr)
        return EXIT_FAILURE
    try:
        job, report = client.submit(args.file, skip_invalid=args.skip_invalid)
        if job is None:
            print(report.format_text(), file=sys.stderr)
            return EXIT_FAILURE
        for w in job.get("warnings") or []:
            print("line %s: warning: %s" % (w.get("line"), w.get("message")), file=sys.stderr)
        if job.get("skipped_lines"):
            print("skipping invalid line(s): %s" % ", ".join(map(str, job["skipped_lines"])), file=sys.stderr)
        print("job %s: %d tasks submitted to the service at %s" % (job["id"], job["tasks"], client.url),
              file=sys.stderr)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        bar = None if args.quiet else ProgressBar(sys.stderr)
        summary = client.follow(job["id"], stop=stop, on_progress=bar.update if bar else None)
        if bar:
            bar.close()
        if summary is None or summary["status"] not in states.FINISHED:
            print("stopped following: job %s keeps running in the service; `glmtts batch status %s` shows it, "
                  "`glmtts batch cancel %s` cancels it" % (job["id"], job["id"], job["id"]), file=sys.stderr)
            return EXIT_INTERRUPTED
        if args.out:
            names = client.download(job["id"], args.out)
            print("downloaded %d file(s) into %s" % (len(names), args.out), file=sys.stderr)
            summary = dict(summary, out_dir=os.path.abspath(args.out))
    except GlmttsError as e:
        print("glmtts batch run: error: %s" % e, file=sys.stderr)
        return EXIT_FAILURE
    return _print_result(summary)


def _print_result(summary):
    p = summary["progress"]
    print("job %s %s: %d done, %d failed of %d; outputs in %s" % (
        summary["id"], summary["status"], p["done"], p["failed"], p["total"], summary["out_dir"]))
    for f in summary["failures"]:
        print("  line %s (%s): %s" % (f["line"], f["output_name"], f["reason"]))
    return EXIT_OK if summary["status"] == "done" and not p["failed"] else EXIT_FAILURE


class ProgressBar:
    """A one-line bar on a terminal; on a pipe or log file, a line every 10 s or 10%."""

    def __init__(self, stream, width=30, clock=time.monotonic):
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.width = width
        self.clock = clock
        self.t0 = clock()
        self.count0 = None
        self.last = (0.0, -1)

    def update(self, job, progress):
        finished = progress.total - progress.pending
        if self.count0 is None:
            self.count0 = finished - 1
        now = self.clock()
        rate = (finished - self.count0) / max(now - self.t0, 1e-6)
        eta = progress.pending / rate if rate > 0 else 0
        pct = 100.0 * finished / progress.total if progress.total else 100.0
        fill = int(self.width * pct / 100)
        line = "[%s%s] %d/%d %3.0f%%%s  %.1f tasks/s  ETA %ds" % (
            "#" * fill, "-" * (self.width - fill), finished, progress.total, pct,
            (", %d failed" % len(progress.failed)) if progress.failed else "", rate, eta)
        if self.tty:
            self.stream.write("\r" + line)
            self.stream.flush()
        elif now - self.last[0] >= 10 or int(pct // 10) != self.last[1] or not progress.pending:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.last = (now, int(pct // 10))

    def close(self):
        if self.tty:
            self.stream.write("\n")


def cmd_status(args):
    from .store import JobStore
    summary = JobStore(_settings(args)).get(args.job).summary()
    if args.json:
        print(json.dumps(summary, ensure_ascii=False, indent=1))
        return EXIT_OK
    p = summary["progress"]
    print("job %s: %s%s" % (summary["id"], summary["state"], (" (%s)" % summary["reason"]) if summary["reason"] else ""))
    print("  progress: %d/%d finished (%.0f%%), %d done, %d failed" % (
        p["total"] - p["pending"], p["total"], p["percent"], p["done"], p["failed"]))
    print("  outputs:  %s" % summary["out_dir"])
    print("  source:   %s" % (summary["source"] or "upload"))
    if summary.get("runner"):
        print("  run by:   %s" % summary["runner"])
    for f in summary["failures"]:
        print("  failed line %s (%s): %s" % (f["line"], f["output_name"], f["reason"]))
    if summary["state"] == "interrupted":
        print("  the process running it stopped; `glmtts batch run %s --out %s` or a service start resumes it" % (
            summary["source"] or "FILE", summary["out_dir"]))
    return EXIT_OK


def cmd_list(args):
    from .store import JobStore
    jobs = [j.summary() for j in JobStore(_settings(args)).list()]
    if args.json:
        print(json.dumps(jobs, ensure_ascii=False, indent=1))
        return EXIT_OK
    if not jobs:
        print("no batch jobs")
    for s in jobs:
        p = s["progress"]
        print("%s  %-11s %5d/%-5d %3d failed  %s" % (s["id"], s["state"], p["total"] - p["pending"], p["total"],
                                                    p["failed"], s["out_dir"]))
    return EXIT_OK


def cmd_cancel(args):
    from . import states
    from .store import JobStore
    job = JobStore(_settings(args)).get(args.job)
    if job.status in states.FINISHED:
        print("job %s is already %s" % (job.id, job.status))
        return EXIT_OK
    job.request_cancel()
    if not job.locked_by_other():
        if not job.cancel():  # a runner finished it meanwhile: finished jobs stay finished
            print("job %s is already %s" % (job.id, job.status))
            return EXIT_OK
        print("job %s cancelled" % job.id)
    else:
        print("job %s: cancellation requested; it stops after the task in progress" % job.id)
    return EXIT_OK


def cmd_prune(args):
    from .retention import prune
    from .validate import human_bytes
    _setup_logging()
    report = prune(_settings(args), older_than_days=args.older_than, dry_run=args.dry_run)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        verb = "would delete" if args.dry_run else "deleted"
        print("%s %d finished job(s) older than %g days, %s freed" % (
            verb, len(report["pruned"]), report["older_than_days"], human_bytes(report["bytes_freed"])))
        for d in report["kept_outputs"]:
            print("  kept user output directory %s (not managed by glmtts)" % d)
        cache = report.get("cache")
        if cache and cache["files"]:
            print("%s %d cached UI file(s) (uploads, results) under %s, %s freed" % (
                verb, cache["files"], os.path.dirname(cache["dirs"][0]), human_bytes(cache["bytes_freed"])))
        for e in report["errors"]:
            print("  error: %s" % e)
    return EXIT_FAILURE if report["errors"] else EXIT_OK
