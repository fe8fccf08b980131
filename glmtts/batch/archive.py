"""The zip of a job's outputs plus manifest.json, streamed chunk by chunk: nothing is
staged on disk (the disk may be what is short) and memory holds one output at a time."""

import json
import os
import time
import zipfile


class _Sink:
    """A write-only, unseekable file: zipfile then writes data descriptors, no seeks."""

    def __init__(self):
        self.chunks = []

    def write(self, data):
        self.chunks.append(bytes(data))
        return len(data)

    def flush(self):
        pass

    def take(self):
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data


def manifest(job, progress=None):
    progress = progress or job.progress()
    tasks = []
    for t in job.tasks:
        entry = {"task": t.index, "line": t.line, "output_name": t.output_name, "input_text": t.input_text}
        if t.index in progress.done:
            rec = progress.done[t.index]
            entry.update(status="done", file=rec["file"], audio_s=rec.get("audio_s"),
                         sample_rate=rec.get("sample_rate"), note=rec.get("note"))
        elif t.index in progress.failed:
            entry.update(status="failed", reason=progress.failed[t.index].get("reason"))
        else:
            entry.update(status="pending")
        tasks.append(entry)
    return {"job": job.id, "status": job.status, "source": job.state.get("source"),
            "skipped_lines": job.state.get("skipped_lines") or [], "progress": progress.to_dict(), "tasks": tasks}


def iter_zip(job):
    """Yield the bytes of a zip: <output_name>.wav for each finished task, manifest.json."""
    progress = job.progress()
    sink = _Sink()
    stamp = time.localtime()[:6]
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as z:
        for index in sorted(progress.done):
            name = progress.done[index]["file"]
            path = os.path.join(job.out_dir, name)
            if not os.path.isfile(path):
                continue  # pruned or deleted by hand: the manifest still lists it
            z.write(path, arcname=name)
            yield sink.take()
        info = zipfile.ZipInfo("manifest.json", date_time=stamp)
        z.writestr(info, json.dumps(manifest(job, progress), ensure_ascii=False, indent=1))
    yield sink.take()
