"""The UI's System tab: an operator's live dashboard.

What it shows, refreshed every REFRESH_S by a gr.Timer: health state and reason, engine
and device (and whether it has a prompt cache), queue depth and in-flight work (interactive
and batch), GPU memory per device with a plot over the last hour (only where the runtime's
GPU status says a GPU exists; the "Clear GPU memory" button only then), the last incidents
of this instance from ``<state_dir>/incidents.jsonl`` with their outcome, outage (fault to
healthy again) and a link to their runbook, and whether the watchdog is escalated for this
instance, waiting for `glmtts-watchdog resume` (its guards in
``<state_dir>/watchdog/state.json``, read only).

The ticks are UI polling (service/access.py quiet_poll): counted in /metrics under route
"ui_poll", no access line each. They run with queue=False (a plain POST, no event stream),
and only read what the runtime already holds: GPU figures come from the runtime's own
5-second NVML sampling, never an NVML call per tick.

Runbooks are served read-only at RUNBOOK_PATH/<id> from the runbooks directory the
watchdog uses (glmtts/watchdog/runbook.py default_dir), so the link works offline."""

import collections
import html
import json
import logging
import os
import threading
import time
from urllib.parse import urlparse

import gradio as gr

from .access import quiet_poll

log = logging.getLogger(__name__)

REFRESH_S = 5.0
HISTORY_S = 3600.0
SAMPLE_S = 10.0          # one GPU sample per 10 s: 360 points for the hour
LAST_INCIDENTS = 8
RUNBOOK_PATH = "/ui/runbooks"
COLORS = {"ok": "#1a7f37", "loading": "#9a6700", "draining": "#9a6700", "degraded": "#bc4c00", "failed": "#cf222e"}


def _port(url):
    try:
        u = urlparse(url)
        return u.port or (443 if u.scheme == "https" else 80)
    except (ValueError, TypeError):
        return None


class GpuHistory:
    """Used/total MB per device over the last hour, sampled from ``runtime.gpu_status``
    (which the runtime refreshes itself) by a daemon thread, so the plot has the hour
    even when no page was open."""

    def __init__(self, runtime, clock=time.time):
        self.runtime = runtime
        self.clock = clock
        self.samples = collections.deque(maxlen=int(HISTORY_S / SAMPLE_S) + 1)  # (t, {index: (used, total)})
        self._lock = threading.Lock()
        self._thread = None

    def sample(self):
        status = self.runtime.gpu_status or {}
        if not status.get("available"):
            return
        devs = {d["index"]: (d["used_mb"], d["total_mb"]) for d in status.get("devices", [])
                if d.get("used_mb") is not None}
        if devs:
            with self._lock:
                self.samples.append((self.clock(), devs))

    def start(self):
        if self._thread is None:
            def loop():
                while True:
                    try:
                        self.sample()
                    except Exception as e:  # the plot must never take anything down
                        log.debug("gpu history sample failed: %s", e)
                    time.sleep(SAMPLE_S)
            self._thread = threading.Thread(target=loop, name="glmtts-gpu-history", daemon=True)
            self._thread.start()

    def series(self):
        cutoff = self.clock() - HISTORY_S
        with self._lock:
            return [(t, d) for t, d in self.samples if t >= cutoff]


def _instance_units(settings):
    from glmtts.watchdog.instances import configured

    try:
        return {i.unit for i in configured(settings) if _port(i.url) == settings.server.port}
    except Exception:  # a bad watchdog.instances is the watchdog's error to report
        return set()


class JournalView:
    """This instance's incidents (latest record of each), re-read only when the journal changed."""

    def __init__(self, settings):
        from glmtts.watchdog.incidents import incidents_path

        self.settings = settings
        self.path = incidents_path(settings)
        self._key = None
        self._incidents = []

    def incidents(self):
        from glmtts.watchdog.incidents import IncidentLog

        try:
            st = os.stat(self.path)
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            return []
        if key != self._key:
            port = self.settings.server.port
            self._incidents = [d for d in IncidentLog(self.path, read_only=True).read()
                               if _port(d.get("url")) == port]
            self._key = key
        return self._incidents


def watchdog_guard(settings, units):
    """(escalated guard dicts by unit, problem or None) from the watchdog's state file."""
    from glmtts.watchdog.state import watchdog_dir
    from glmtts.watchdog.states import GuardState

    path = os.path.join(watchdog_dir(settings), "state.json")
    try:
        with open(path, "rb") as f:
            guards = json.loads(f.read().decode("utf-8")).get("guards", {})
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError, UnicodeDecodeError, AttributeError) as e:
        return {}, "%s unreadable: %s" % (path, e)
    return {u: g for u, g in guards.items() if u in units and isinstance(g, dict)
            and g.get("state") == GuardState.ESCALATED}, None


class Dashboard:
    def __init__(self, runtime):
        self.runtime = runtime
        self.history = GpuHistory(runtime)
        self.journal = JournalView(runtime.settings)

    def snapshot(self):
        rt = self.runtime
        health = rt.health()
        incidents = self.journal.incidents()
        units = _instance_units(rt.settings) | {d.get("unit") for d in incidents if d.get("unit")}
        escalated, problem = watchdog_guard(rt.settings, units)
        batches = getattr(rt, "batches", None)
        running = 0
        if batches is not None:
            from glmtts.batch import states

            try:
                running = sum(1 for j in batches.store.list() if j.status in (states.RUNNING, states.QUEUED))
            except Exception as e:  # an unreadable job is the Batch tab's to explain
                log.debug("dashboard: batch jobs unreadable: %s", e)
        return {"health": health, "incidents": incidents[-LAST_INCIDENTS:][::-1], "escalated": escalated,
                "state_problem": problem, "batch_jobs": running, "gpu_series": self.history.series(),
                "limits": rt.settings.limits}

    def gpu_available(self):
        return bool((self.runtime.gpu_status or {}).get("available"))


def _row(k, v):
    return "<tr><th style='text-align:left;padding-right:1em'>%s</th><td>%s</td></tr>" % (k, v)


def _svg(series):
    """Used GPU memory per device over the last hour, as an inline SVG (no JS, no CDN)."""
    w, h, pad = 560, 140, 30
    if len(series) < 2:
        return "<p id='dash-gpu-plot'><i>GPU memory plot: collecting samples (one per %gs)…</i></p>" % SAMPLE_S
    t1 = series[-1][0]
    t0 = max(series[0][0], t1 - HISTORY_S)  # a service up for less than the hour: the time it has
    span = max(t1 - t0, 1.0)
    total = max(tot for _, d in series for _, tot in d.values()) or 1
    lines = []
    for i, idx in enumerate(sorted({k for _, d in series for k in d})):
        pts = ["%.1f,%.1f" % (pad + (t - t0) / span * (w - 2 * pad), h - pad - d[idx][0] / total * (h - 2 * pad))
               for t, d in series if idx in d]
        color = ("#0969da", "#8250df", "#bf3989", "#1a7f37")[i % 4]
        lines.append("<polyline fill='none' stroke='%s' stroke-width='2' points='%s'/>" % (color, " ".join(pts)))
        x, y = pts[-1].split(",")
        lines.append("<circle cx='%s' cy='%s' r='3' fill='%s'/><text x='%s' y='%.1f' font-size='11'>GPU %s</text>"
                     % (x, y, color, float(x) - 40, float(y) - 6, idx))
    left = "-%.0f min" % (span / 60) if span >= 120 else "-%.0f s" % span
    return ("<svg id='dash-gpu-plot' width='%d' height='%d' style='border:1px solid #ccc'>"
            "<text x='2' y='14' font-size='11'>%.0f MB</text><text x='2' y='%d' font-size='11'>0</text>"
            "<text x='%d' y='%d' font-size='11'>%s</text><text x='%d' y='%d' font-size='11'>now</text>%s</svg>"
            % (w, h, total, h - pad, pad, h - 8, left, w - pad - 10, h - 8, "".join(lines)))


def _ago(t):
    if not t:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def render(snap):
    h = snap["health"]
    esc = html.escape
    state = h.get("status") or "?"
    color = COLORS.get(state, "#57606a")
    eng = h.get("engine") or {}
    caps = eng.get("capabilities") or []
    lim = snap["limits"]
    out = ["<div id='dash'>"]
    out.append("<div id='dash-state' style='font-size:1.3em;padding:.4em;border-left:6px solid %s'>"
               "<b style='color:%s'>%s</b>%s</div>" % (color, color, esc(state.upper()),
                                                       (" — " + esc(str(h["reason"]))) if h.get("reason") else ""))
    if snap["escalated"]:
        for unit, g in sorted(snap["escalated"].items()):
            out.append("<div id='dash-escalated' style='margin:.5em 0;padding:.5em;background:#ffebe9;"
                       "border:1px solid #cf222e'><b>Watchdog escalated for %s</b> since %s: %s.<br>Automatic "
                       "remediation is stopped; after fixing the cause run <code>glmtts-watchdog resume</code>."
                       "%s</div>" % (esc(unit), esc(_ago(g.get("escalated_at"))), esc(g.get("reason") or "no reason"),
                                     (" Incident: <code>%s</code>." % esc(g["incident"])) if g.get("incident") else ""))
    else:
        out.append("<div id='dash-watchdog'>Watchdog: armed (not escalated)%s</div>"
                   % (" — " + esc(snap["state_problem"]) if snap["state_problem"] else ""))
    out.append("<table id='dash-facts'>")
    out.append(_row("Engine", "%s on %s%s" % (esc(str(eng.get("name"))), esc(str(eng.get("device", "cpu"))),
                                              "" if eng.get("loaded", True) else " (not loaded)")))
    out.append(_row("Prompt cache", "yes" if "prompt_cache" in caps else "not offered by this engine"))
    out.append(_row("Queue", "<span id='dash-queue'>%s waiting (limit %d), %s running (limit %d)</span>"
                    % (h.get("queue_depth"), lim.max_queue, h.get("in_flight"), lim.max_concurrency)))
    out.append(_row("Batch jobs", "%d queued or running" % snap["batch_jobs"]))
    out.append(_row("Uptime", "%.0f s · version %s · UI %s" % (h.get("uptime_s") or 0, esc(str(h.get("version"))),
                                                                esc(str(h.get("ui"))))))
    if h.get("last_error"):
        out.append(_row("Last error", esc(str(h["last_error"]))))
    gpu = h.get("gpu") or {}
    if gpu.get("available"):
        for d in gpu.get("devices", []):
            out.append(_row("GPU %s" % d.get("index"), "%s: %.0f of %.0f MB used, %.0f MB free" % (
                esc(str(d.get("name"))), d.get("used_mb") or 0, d.get("total_mb") or 0, d.get("free_mb") or 0)))
    else:
        out.append(_row("GPU", "none (%s)" % esc(str(gpu.get("reason") or "not available"))))
    out.append("</table>")
    if gpu.get("available"):
        out.append("<h4>GPU memory used, last hour</h4>" + _svg(snap["gpu_series"]))
    out.append("<h4>Last incidents (watchdog)</h4>")
    if not snap["incidents"]:
        out.append("<p id='dash-incidents'>No incidents recorded for this instance.</p>")
    else:
        out.append("<table id='dash-incidents' style='border-collapse:collapse'><tr><th>detected</th><th>signatures"
                   "</th><th>outcome</th><th>outage</th><th>runbook</th><th>why</th></tr>")
        for d in snap["incidents"]:
            rb = d.get("runbook")
            link = "<a href='%s/%s' target='_blank'>%s</a>" % (RUNBOOK_PATH, esc(rb), esc(rb)) if rb else "-"
            outage = "%.1f s" % d["outage_s"] if d.get("outage_s") is not None else "-"
            out.append("<tr><td>%s</td><td>%s</td><td><b>%s</b></td><td>%s</td><td>%s</td><td>%s</td></tr>" % (
                esc(_ago(d.get("detected_at"))), esc(", ".join(d.get("signatures") or [])),
                esc(str(d.get("outcome") or d.get("state"))), outage, link, esc(str(d.get("reason") or ""))))
        out.append("</table>")
    out.append("<p style='color:#57606a;font-size:.85em'>Refreshed %s (every %gs).</p></div>"
               % (_ago(time.time()), REFRESH_S))
    return "".join(out)


def add_routes(app, runtime):
    """GET RUNBOOK_PATH/<id>: a runbook's text, from the watchdog's runbooks directory."""
    from fastapi.responses import PlainTextResponse
    from starlette.routing import Route

    from glmtts.watchdog.runbook import default_dir

    async def runbook(request):
        name = request.path_params["name"]
        directory = default_dir(runtime.settings)
        try:
            known = {f[:-3] for f in os.listdir(directory) if f.endswith(".md") and f != "README.md"}
        except OSError:
            known = set()
        if name not in known:  # never a path from the URL: only a runbook that exists by that id
            return PlainTextResponse("unknown runbook %r; known: %s\n" % (name, ", ".join(sorted(known)) or "none"),
                                     status_code=404)
        with open(os.path.join(directory, name + ".md"), encoding="utf-8") as f:
            return PlainTextResponse(f.read(), media_type="text/plain; charset=utf-8")

    # first: Gradio's own routes include catch-alls that would answer it otherwise
    app.router.routes.insert(0, Route(RUNBOOK_PATH + "/{name}", runbook, methods=["GET"]))


def system_tab(runtime):
    board = Dashboard(runtime)
    board.history.sample()
    board.history.start()
    view = gr.HTML(lambda: render(board.snapshot()), elem_id="dash-html")
    with gr.Row():
        clear = gr.Button("Clear GPU memory", variant="secondary", visible=board.gpu_available(), elem_id="dash-clear")
    cleared = gr.JSON(label="Clear GPU memory: before / after", visible=False)
    timer = gr.Timer(REFRESH_S)

    def tick():
        return render(board.snapshot()), gr.update(visible=board.gpu_available())

    def do_clear():
        from . import admin

        if not board.gpu_available():
            return gr.update(visible=True, value={"error": "no GPU on this machine: nothing to clear"})
        try:
            result = admin.clear(runtime)
        except Exception as e:  # the button must never break the page
            log.warning("clear GPU memory from the UI failed: %s", e)
            result = {"error": str(e)}
        return gr.update(visible=True, value=result)

    quiet_poll(timer.tick(tick, outputs=[view, clear], queue=False, api_visibility="private",
                          show_progress="hidden"))
    clear.click(do_clear, outputs=cleared, api_name="clear_gpu_memory")
    return view
