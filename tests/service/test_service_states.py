"""The service's two machines walked arrow by arrow through the real objects: the inference
worker (service/worker.py WORKER: loading -> ok | failed, ok -> failed) with a trivial
engine, and the UI gate (service/uigate.py GATE: starting -> ready | failed, failed ->
ready) with a trivial app. Each arrow sets what /healthz, /metrics and "/" show (the
entry effects); an arrow outside the table raises and changes nothing (a failed worker
never comes back in-process). And no module but the owner assigns their ``state``."""

import ast
import asyncio
import contextlib
import json
import logging
import pathlib

import numpy as np
import pytest

from glmtts import config
from glmtts.engines.base import Engine, SynthesisResult
from glmtts.machine import InvalidTransition
from service import uigate, worker as worker_mod
from service.metrics import Metrics
from service.uigate import GATE, UiGate
from service.worker import FAILED, LOADING, OK, WORKER, Worker

ROOT = pathlib.Path(__file__).resolve().parents[2]


class TinyEngine(Engine):
    """Loads (or raises ``broken``) and says one tenth of a second of a tone."""

    def __init__(self, settings, broken=None):
        super().__init__(settings)
        self.broken = broken

    def load(self):
        if self.broken:
            raise RuntimeError(self.broken)
        self.loaded = True

    def synthesize_stream(self, request):
        yield SynthesisResult(np.ones(request.sample_rate // 10, dtype=np.float32) * 0.1, request.sample_rate)


def new_worker(broken=None):
    settings = config.load("", env={})
    metrics = Metrics()
    return Worker(TinyEngine(settings, broken), settings, metrics=metrics), metrics


def gauge(metrics):
    return {s: metrics.registry.get_sample_value("glmtts_state", {"state": s}) for s in (LOADING, OK, FAILED)}


def test_the_worker_table_is_what_the_code_takes():
    assert WORKER.pairs == [(LOADING, OK), (LOADING, FAILED), (OK, FAILED)]


def test_loading_to_ok_reports_ready_in_healthz_and_metrics(caplog):
    caplog.set_level(logging.INFO, "service.worker")
    w, metrics = new_worker()
    assert w.status()[0] == LOADING and gauge(metrics)[LOADING] == 1
    w.load()
    assert (w.state, w.reason) == (OK, None)
    assert gauge(metrics) == {LOADING: 0, OK: 1, FAILED: 0}
    assert ("INFO", "worker: loading -> ok") in [(r.levelname, r.getMessage()) for r in caplog.records]


def test_loading_to_failed_when_the_engine_cannot_load_is_critical(caplog):
    w, metrics = new_worker(broken="no weights in /models")
    with pytest.raises(RuntimeError):
        w.load()
    assert w.state == FAILED and "failed to load: no weights in /models" in w.reason
    assert w.status() == (FAILED, w.reason) and gauge(metrics)[FAILED] == 1
    assert [r.levelname for r in caplog.records if "loading -> failed" in r.getMessage()] == ["CRITICAL"]


def test_ok_to_failed_and_a_failed_worker_never_comes_back_in_process():
    w, metrics = new_worker()
    w.load()
    w.fail("cuda_fatal: CUDA error: an illegal memory access was encountered")
    assert w.state == FAILED and w.reason.startswith("cuda_fatal") and gauge(metrics)[FAILED] == 1
    reason = w.reason
    with pytest.raises(InvalidTransition, match="worker: failed -> ok is not allowed"):
        w.load()  # the engine loads, but the worker stays failed: only a new process recovers
    assert (w.state, w.reason) == (FAILED, reason) and gauge(metrics) == {LOADING: 0, OK: 0, FAILED: 1}


@pytest.mark.parametrize("old, new", [(OK, LOADING), (FAILED, LOADING), (LOADING, "degraded")])
def test_a_worker_arrow_outside_the_table_raises_and_changes_nothing(old, new):
    w, metrics = new_worker()
    if old == OK:
        w.load()
    elif old == FAILED:
        w.fail("gone")
    before = (w.state, w.reason, gauge(metrics))
    with pytest.raises(InvalidTransition):
        w._transition(new, "not allowed")
    assert (w.state, w.reason, gauge(metrics)) == before


# -- the UI gate ----------------------------------------------------------------------

class Shell:
    """What Gradio's FastAPI shell offers UiGate.open: a router with a lifespan."""

    def __init__(self, broken=False):
        self.started = False
        self.broken = broken
        self.router = self

    @contextlib.asynccontextmanager
    async def lifespan_context(self, app):
        if self.broken:
            raise RuntimeError("queue would not start")
        self.started = True
        yield


async def ui_app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"the UI"})


def get(gate):
    sent = []

    async def go():
        async def receive():
            return {"type": "http.request"}

        async def send(message):
            sent.append(message)
        await gate({"type": "http", "headers": []}, receive, send)
    asyncio.run(go())
    return sent[0]["status"], sent[1]["body"]


def test_the_gate_table_is_what_the_code_takes():
    assert GATE.pairs == [(uigate.STARTING, uigate.READY), (uigate.STARTING, uigate.FAILED),
                          (uigate.FAILED, uigate.READY)]


def test_starting_to_ready_routes_the_page_to_the_ui():
    gate, shell = UiGate(), Shell()
    status, body = get(gate)
    assert status == 503 and json.loads(body)["error"]["code"] == "ui_starting"
    asyncio.run(gate.open(shell, ui_app))
    assert (gate.state, gate.reason, shell.started) == (uigate.READY, None, True)
    assert get(gate) == (200, b"the UI")


def test_starting_to_failed_answers_503_with_the_cause_and_logs_an_error(caplog):
    gate = UiGate()
    with pytest.raises(RuntimeError):
        asyncio.run(gate.open(Shell(broken=True), ui_app))
    gate.fail("the UI could not be started: RuntimeError: queue would not start")
    assert gate.state == uigate.FAILED
    status, body = get(gate)
    assert status == 503 and json.loads(body)["error"] == {
        "message": "the UI could not be started: RuntimeError: queue would not start", "type": "service_unavailable",
        "code": "ui_failed"}
    assert [r.levelname for r in caplog.records if "starting -> failed" in r.getMessage()] == ["ERROR"]


def test_failed_to_ready_when_a_slow_start_succeeds_after_all_and_ready_stays_ready():
    gate = UiGate()
    gate.fail("the UI could not be started: TimeoutError: ")
    asyncio.run(gate.open(Shell(), ui_app))
    assert (gate.state, gate.reason) == (uigate.READY, None) and get(gate) == (200, b"the UI")
    gate.fail("too late")  # ready -> failed is no arrow: the UI serves, so it is not marked failed
    assert (gate.state, gate.reason) == (uigate.READY, None)
    with pytest.raises(InvalidTransition, match="ui: ready -> starting is not allowed"):
        gate._transition(uigate.STARTING, "again")
    assert gate.state == uigate.READY


# -- nobody else writes these states -------------------------------------------------------

def _enclosing_functions(tree):
    """node -> name of the function it is in (the innermost)."""
    where = {}

    def walk(node, fn):
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else fn
            where[child] = inner
            walk(child, inner)
    walk(tree, None)
    return where


def test_no_module_but_the_owner_assigns_the_worker_gate_or_drain_state():
    """Nothing in glmtts/ or service/ assigns another object's ``.state`` (``w.state = ``)
    or sets it with setattr (glmtts/machine.py, the machines' writer, excepted); in
    worker.py and uigate.py ``self.state`` is assigned only by ``__init__`` (the initial
    state); WORKER and GATE are run only by their own modules."""
    offenders = []
    owners = {"service/worker.py": "WORKER", "service/uigate.py": "GATE", "service/drain.py": "DRAIN"}
    for top in ("glmtts", "service"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            tree = ast.parse(path.read_text(encoding="utf-8"), rel)
            where = _enclosing_functions(tree)
            for node in ast.walk(tree):
                if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for t in targets:
                        if not (isinstance(t, ast.Attribute) and t.attr == "state"):
                            continue
                        is_self = isinstance(t.value, ast.Name) and t.value.id == "self"
                        if not is_self and rel != "glmtts/machine.py":
                            offenders.append("%s:%d assigns another object's .state" % (rel, node.lineno))
                        elif is_self and rel in owners and where.get(node) != "__init__":
                            offenders.append("%s:%d assigns self.state outside __init__" % (rel, node.lineno))
                if isinstance(node, ast.Call):
                    func = node.func
                    if (isinstance(func, ast.Name) and func.id == "setattr" and len(node.args) > 1
                            and isinstance(node.args[1], ast.Constant) and node.args[1].value == "state"):
                        offenders.append("%s:%d setattr(..., 'state')" % (rel, node.lineno))
                    if isinstance(func, ast.Attribute) and func.attr in ("advance", "change"):
                        owner = getattr(func.value, "id", None) or getattr(func.value, "attr", None)
                        if owner in owners.values() and owners.get(rel) != owner:
                            offenders.append("%s:%d runs %s" % (rel, node.lineno, owner))
    assert not offenders, offenders
    assert worker_mod.WORKER is WORKER and uigate.GATE is GATE
