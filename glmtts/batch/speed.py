"""The engine's measured batch speed, kept so `glmtts batch validate` can estimate run
time before any work: seconds of compute per second of audio (real-time factor), per
engine, in <state_dir>/batches/speed.json, updated by the runner after each job."""

import json
import logging
import os

from ..fsutil import atomic_write

log = logging.getLogger(__name__)

# Used until a job has run on this machine: espeak is ~50x faster than real time on a
# CPU; GLM-TTS on a GPU is roughly real time for the LLM plus flow stages.
ASSUMED_RTF = {"espeak": 0.05}
DEFAULT_RTF = 1.0


class Speed:
    def __init__(self, path, data=None):
        self.path = path
        self.data = data or {}

    @classmethod
    def load(cls, settings):
        path = os.path.join(settings.paths.state_dir, "batches", "speed.json")
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict):
                raise ValueError("not an object")
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable %s: %s", path, e)
            data = {}
        return cls(path, data)

    def rtf(self, engine):
        entry = self.data.get(engine)
        if entry and entry.get("audio_s", 0) > 0:
            return (round(entry["compute_s"] / entry["audio_s"], 4),
                    "measured over %d tasks on engine %s" % (entry["tasks"], engine))
        return ASSUMED_RTF.get(engine, DEFAULT_RTF), "assumed for engine %s: no batch has run here yet" % engine

    def record(self, engine, tasks, compute_s, audio_s):
        """Blend a finished run into the figures (recent runs weigh more)."""
        if tasks <= 0 or audio_s <= 0:
            return
        old = self.data.get(engine, {"tasks": 0, "compute_s": 0.0, "audio_s": 0.0})
        decay = 0.5 if old["tasks"] else 0.0
        self.data[engine] = {"tasks": int(old["tasks"] * decay) + tasks,
                             "compute_s": old["compute_s"] * decay + compute_s,
                             "audio_s": old["audio_s"] * decay + audio_s}
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            atomic_write(self.path, json.dumps(self.data, indent=1).encode())
        except OSError as e:  # an estimate is never worth failing a job for
            log.warning("could not save batch speed figures to %s: %s", self.path, e)
