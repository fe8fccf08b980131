"""Runbooks: runbooks/<id>.md, YAML front matter the watchdog executes, prose for people.

    ---
    id: cuda-oom
    title: CUDA out of memory
    severity: critical
    triggers: [cuda_oom]
    steps:
      - capture_diagnostics
      - restart: {when: unhealthy}
      - smoke_test
    on_failure:
      - escalate: {reason: "..."}
    escalate: who to page and what to tell them
    ---

A step is an action name, or a one-key mapping from the action name to its parameters.
Parsing validates everything a typo could break: keys, severity, trigger names against
the signature table, action names against the action table, parameter names and types.
"""

import os
import re
from dataclasses import dataclass, field

import yaml

from ..errors import ConfigError
from . import signatures
from .actions import ACTIONS, COMMON_PARAMS, resolve

REQUIRED = ("id", "title", "severity", "triggers", "steps")
ALLOWED = REQUIRED + ("on_failure", "escalate")


class RunbookError(ConfigError):
    pass


@dataclass
class Step:
    action: str
    params: dict = field(default_factory=dict)

    def __str__(self):
        return self.action + (" %s" % self.params if self.params else "")


@dataclass
class Runbook:
    id: str
    title: str
    severity: str
    triggers: list
    steps: list
    on_failure: list = field(default_factory=list)
    escalate: str = ""
    path: str = ""
    body: str = ""


def default_dir(settings=None):
    configured = getattr(getattr(settings, "watchdog", None), "runbooks_dir", "") if settings else ""
    if configured:
        return configured
    here = os.path.dirname(os.path.abspath(__file__))
    for cand in (os.path.join(here, "..", "..", "runbooks"), "/usr/share/glmtts/runbooks", "/opt/glmtts/runbooks"):
        if os.path.isdir(cand):
            return os.path.normpath(cand)
    return os.path.normpath(os.path.join(here, "..", "..", "runbooks"))


def _check_type(value, typ):
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typ)


def parse_step(raw, where):
    if isinstance(raw, str):
        name, params = raw, {}
    elif isinstance(raw, dict) and len(raw) == 1:
        name, params = next(iter(raw.items()))
        params = params or {}
        if not isinstance(params, dict):
            raise RunbookError("%s: parameters of %s must be a mapping, got %r" % (where, name, params))
    else:
        raise RunbookError("%s: a step is an action name or {action: {params}}, got %r" % (where, raw))
    action = resolve(name)
    if action is None:
        raise RunbookError("%s: unknown action %r; actions: %s" % (where, name, ", ".join(sorted(ACTIONS))))
    known = dict(COMMON_PARAMS, **action.params)
    for k, v in params.items():
        if k not in known:
            raise RunbookError("%s: action %s has no parameter %r; allowed: %s" % (where, name, k, ", ".join(sorted(known)) or "none"))
        typ = known[k][0]
        if not _check_type(v, typ):
            raise RunbookError("%s: %s.%s must be %s, got %r" % (where, name, k, typ.__name__, v))
    if params.get("when", "always") not in ("always", "unhealthy"):
        raise RunbookError("%s: %s.when must be always | unhealthy" % (where, name))
    return Step(name, dict(params))


def parse(text, path="<runbook>"):
    m = re.match(r"\A---\s*\n(.*?)\n---\s*(?:\n|\Z)(.*)\Z", text, re.S)
    if not m:
        raise RunbookError("%s: no YAML front matter (the file must start with a --- block)" % path)
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError as e:
        raise RunbookError("%s: front matter is not valid YAML: %s" % (path, str(e).replace("\n", " "))) from None
    if not isinstance(meta, dict):
        raise RunbookError("%s: front matter must be a mapping" % path)
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise RunbookError("%s: missing %s" % (path, ", ".join(missing)))
    unknown = [k for k in meta if k not in ALLOWED]
    if unknown:
        raise RunbookError("%s: unknown key(s) %s; allowed: %s" % (path, ", ".join(unknown), ", ".join(ALLOWED)))
    if meta["severity"] not in signatures.SEVERITIES:
        raise RunbookError("%s: severity must be one of %s" % (path, ", ".join(signatures.SEVERITIES)))
    triggers = meta["triggers"]
    if not isinstance(triggers, list) or not triggers:
        raise RunbookError("%s: triggers must be a non-empty list of signature names" % path)
    for t in triggers:
        if t not in signatures.BY_NAME:
            raise RunbookError("%s: unknown trigger %r; signatures: %s" % (path, t, ", ".join(signatures.NAMES)))
    steps = meta["steps"]
    if not isinstance(steps, list) or not steps:
        raise RunbookError("%s: steps must be a non-empty list" % path)
    on_failure = meta.get("on_failure") or []
    if not isinstance(on_failure, list):
        raise RunbookError("%s: on_failure must be a list" % path)
    return Runbook(
        id=str(meta["id"]), title=str(meta["title"]), severity=meta["severity"], triggers=list(triggers),
        steps=[parse_step(s, "%s: steps[%d]" % (path, i)) for i, s in enumerate(steps)],
        on_failure=[parse_step(s, "%s: on_failure[%d]" % (path, i)) for i, s in enumerate(on_failure)],
        escalate=str(meta.get("escalate") or ""), path=os.path.abspath(path) if path[:1] != "<" else path,
        body=m.group(2))


def load(path):
    with open(path, encoding="utf-8") as f:
        rb = parse(f.read(), path)
    stem = os.path.splitext(os.path.basename(path))[0]
    if rb.id != stem:
        raise RunbookError("%s: id %r must equal the file name %r" % (path, rb.id, stem))
    return rb


def load_all(directory):
    """id -> Runbook for every runbooks/*.md but README.md."""
    if not os.path.isdir(directory):
        raise RunbookError("runbooks directory %s does not exist (set watchdog.runbooks_dir)" % directory)
    out = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".md") and name.lower() != "readme.md":
            rb = load(os.path.join(directory, name))
            out[rb.id] = rb
    return out


# The part of "## What the automation does" generated from the front matter, so the prose a
# person reads and the steps the watchdog runs cannot drift apart: `glmtts-watchdog runbook
# render ID --write` rewrites it; tests/watchdog/test_watchdog_runbooks.py fails when it is stale.
STEPS_BEGIN = "<!-- steps: generated from the front matter by `glmtts-watchdog runbook render`; do not edit -->"
STEPS_END = "<!-- end of generated steps -->"


def _describe(step):
    action = resolve(step.action)
    params = dict(step.params)
    when = params.pop("when", None)
    shown = ", ".join("%s=%s" % (k, v) for k, v in sorted(params.items()))
    head = "`%s`%s%s" % (step.action, " (%s)" % shown if shown else "", ", only if /healthz still fails" if when == "unhealthy" else "")
    return "%s: %s" % (head, action.summary) if action is not None and action.summary else head


def steps_markdown(rb):
    """The generated block: each step with its parameters and what its action does."""
    out = [STEPS_BEGIN, "Steps:"]
    out += ["%d. %s" % (i, _describe(st)) for i, st in enumerate(rb.steps, 1)]
    if rb.on_failure:
        out.append("")
        out.append("If the service is still not verified afterwards:")
        out += ["%d. %s" % (i, _describe(st)) for i, st in enumerate(rb.on_failure, 1)]
    out.append(STEPS_END)
    return "\n".join(out)


def rendered(text, rb):
    """text (a runbook file) with its generated steps block replaced by the current one,
    inserted right under "## What the automation does" if it has none yet."""
    block = steps_markdown(rb)
    if STEPS_BEGIN in text and STEPS_END in text:
        head, rest = text.split(STEPS_BEGIN, 1)
        return head + block + rest.split(STEPS_END, 1)[1]
    m = re.search(r"^## What the automation does[^\n]*\n", text, re.M)
    if not m:
        raise RunbookError("%s: no '## What the automation does' section to put the steps in" % rb.path)
    return text[:m.end()] + block + "\n\n" + text[m.end():]


def for_signature(runbooks, name):
    """The runbook that triggers on signature name (the first by id), or None."""
    for rb in sorted(runbooks.values(), key=lambda r: r.id):
        if name in rb.triggers:
            return rb
    return None
