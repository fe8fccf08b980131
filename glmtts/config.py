"""One Settings object: defaults < TOML file < GLMTTS_<SECTION>_<KEY> environment.

Each setting is declared once below (section, key, type, default, validator, doc); the
example config (`glmtts config example`, checked in as ops/glmtts.toml.example), the
README table and `glmtts config show` are all produced from these declarations.
Validators are plain functions that raise ValueError with what is allowed.
"""

import ipaddress
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from types import SimpleNamespace

from .errors import ConfigError

DEFAULT_CONFIG_PATH = "/etc/glmtts/glmtts.toml"
# Written by `make run` (ops/run-local.sh). Looked up relative to the working directory,
# and only when GLMTTS_CONFIG is unset and DEFAULT_CONFIG_PATH does not exist, so the
# tools run from a checkout find its local instance without exports while a server's
# /etc file always wins.
LOCAL_RUN_CONFIG = os.path.join("run", "glmtts.toml")
ENV_PREFIX = "GLMTTS_"


# -- validators: return the (possibly normalised) value or raise ValueError ---------

def one_of(*allowed):
    def check(value):
        if value not in allowed:
            raise ValueError("allowed: " + " | ".join(repr(a) for a in allowed))
        return value
    return check


def in_range(lo=None, hi=None):
    def check(value):
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ValueError("allowed: %s..%s" % ("" if lo is None else lo, "" if hi is None else hi))
        return value
    return check


def engine_name(value):
    if value in ("espeak", "glmtts") or re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
        return value
    raise ValueError("allowed: 'espeak' | 'glmtts' | 'package.module:Class'")


def host(value):
    if value in ("localhost", "::", "0.0.0.0"):
        return value
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError("allowed: an IP address such as 127.0.0.1, ::1 or 0.0.0.0") from None
    return value


def url(value):
    if not re.match(r"https?://[^/\s]+", value):
        raise ValueError("allowed: an http:// or https:// URL")
    return value.rstrip("/")


def url_or_empty(value):
    return url(value) if value else value


def absolute_path_or_empty(value):
    if value and not os.path.isabs(value):
        raise ValueError("allowed: an absolute path (or \"\" for none)")
    return value


def absolute_path(value):
    if not value or not os.path.isabs(value):
        raise ValueError("allowed: an absolute path")
    return value


def any_value(value):
    return value


def ip_network(entry):
    """One address or CIDR as an ipaddress network (a bare address is a /32 or /128)."""
    if not entry.strip():
        raise ValueError("an empty entry; allowed: IP addresses or CIDRs such as 127.0.0.1, 10.0.0.0/8, ::1")
    entry = entry.strip()
    if entry == "*":
        # Trusting every peer would let any client pick the address the rate limit and the
        # access log use; whoever truly means it writes the networks out.
        raise ValueError("'*' is not accepted (it lets any client forge its address): list the proxies' addresses "
                         "or networks, e.g. 10.0.0.0/8 (0.0.0.0/0 and ::/0 only if every peer is a proxy)")
    try:
        return ipaddress.ip_network(entry, strict=True)
    except ValueError as e:
        if "host bits set" in str(e):
            raise ValueError("%r has host bits set; did you mean %s?"
                             % (entry, ipaddress.ip_network(entry, strict=False))) from None
        raise ValueError("%r is not an IP address or CIDR; allowed: e.g. 127.0.0.1, 10.0.0.0/8, ::1, fd00::/8"
                         % entry) from None


def ip_networks(value):
    for entry in value:
        ip_network(entry)
    return value


def voice_aliases(value):
    """["alloy=voice_abc123", "nova=default"]: each NAME=VOICE once (names compared
    case-insensitively); VOICE is a saved voice's id or name, or "default"."""
    seen = set()
    for entry in value:
        name, sep, target = entry.partition("=")
        name, target = name.strip(), target.strip()
        if not sep or not name or not target:
            raise ValueError("%r is not NAME=VOICE; allowed: e.g. \"alloy=voice_0123456789ab\" or \"nova=default\""
                             % entry)
        if name.casefold() in seen:
            raise ValueError("alias %r is given twice; give each name once" % name)
        seen.add(name.casefold())
    return value


@dataclass(frozen=True)
class Setting:
    section: str
    key: str
    type: type  # str | int | float | bool | list (of str)
    default: object
    doc: str
    validate: object = any_value

    @property
    def name(self):
        return "%s.%s" % (self.section, self.key)

    @property
    def env(self):
        return "%s%s_%s" % (ENV_PREFIX, self.section.upper(), self.key.upper())


S = Setting
SETTINGS = [
    # [server]
    S("server", "host", str, "127.0.0.1", "Address to bind. Non-loopback needs api_keys (or allow_public_without_keys).", host),
    S("server", "port", int, 7860, "TCP port for the UI and the API.", in_range(1, 65535)),
    S("server", "api_keys", list, [], "Bearer keys accepted on every route but the health routes; empty = no auth (loopback only)."),
    S("server", "allow_public_without_keys", bool, False, "Explicitly allow a non-loopback bind with no api_keys."),
    S("server", "ui", bool, True, "Mount the Gradio UI at /."),
    S("server", "blocklist_file", str, "", "File of words (one per line) the service refuses to speak; \"\" = none.", absolute_path_or_empty),
    S("server", "log_request_text", bool, False, "Log request text on stderr (off: text and audio never reach logs)."),
    S("server", "drain_delay_s", float, 5.0, "On SIGTERM, /readyz answers 503 draining at once and the listener stays open this long before it closes, so load balancers notice; new synthesis gets 503 + Retry-After meanwhile.", in_range(0, 300)),
    S("server", "drain_timeout_s", float, 60.0, "On SIGTERM, in-flight and queued synthesis get this long to finish; what is left gets 503 (never 500); a running batch task checkpoints. The stop budget of every manager is derived from this (see stop_grace_s).", in_range(1, 3600)),
    S("server", "metrics_public", bool, False, "Serve /metrics without the API key (for a Prometheus scrape); off: /metrics needs the key like every other route."),
    S("server", "forwarded_allow_ips", list, [], "Peers (addresses or CIDRs) whose X-Forwarded-For / Forwarded headers are believed; empty = none (the peer address is the client).", ip_networks),
    # [engine]
    S("engine", "name", str, "espeak", "espeak | glmtts | package.module:Class (a plug-in engine).", engine_name),
    S("engine", "sample_rate", int, 24000, "Default output sample rate.", one_of(24000, 32000)),
    S("engine", "seed", int, 42, "Default random seed (same input + seed = same audio).", in_range(0, 2**32 - 1)),
    S("engine", "glmtts_home", str, "", "Checkout of the official GLM-TTS repository, with its ckpt/ (engine glmtts).", absolute_path_or_empty),
    S("engine", "device", str, "auto", "auto | cpu | cuda | cuda:N. Engine glmtts needs CUDA (the official repository hard-codes .cuda()): cpu is a configuration error there; the espeak engine ignores it.", lambda v: v if re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) else one_of("auto", "cpu", "cuda", "cuda:N")(v)),
    S("engine", "use_cache", bool, True, "Prompt cache by default (engine glmtts): later chunks of a long text are prompted with the earlier chunks' text and speech tokens as history, for a steadier voice. Not a KV cache."),
    S("engine", "phoneme", bool, False, "Apply the G2P replacement dictionary by default."),
    S("engine", "g2p_dict", str, "", "Phoneme replacement dictionary (G2P_replace_dict.jsonl format); \"\" = the packaged one.", absolute_path_or_empty),
    S("engine", "max_chunk_chars", int, 80, "Long text is split at sentence punctuation into chunks of at most this many characters.", in_range(10, 1000)),
    S("engine", "warmup_text", str, "你好。", "Short text synthesized once at start-up, before the service reports ready."),
    # [voices]
    S("voices", "aliases", list, [], "Voice names for OpenAI clients, each \"NAME=VOICE\" (e.g. \"alloy=voice_0123456789ab\", \"nova=default\"): {\"voice\": NAME} means that saved voice (id or name) or the default voice. OpenAI's built-in names not listed here are refused with the list of voices (GET /v1/audio/voices).", voice_aliases),
    # [limits]
    S("limits", "rate_limit_per_minute", int, 10, "Requests per minute per client when unauthenticated; 0 = off.", in_range(0)),
    S("limits", "max_concurrency", int, 1, "Syntheses at once (per GPU).", in_range(1, 64)),
    S("limits", "max_queue", int, 16, "Waiting requests before 429.", in_range(0, 10000)),
    S("limits", "request_timeout_s", float, 300.0, "A synthesis that takes longer is abandoned with 504.", in_range(1)),
    S("limits", "worker_stall_s", float, 60.0, "A synthesis that makes no progress (no audio chunk) for this long means the worker is wedged: /healthz says degraded and sd_notify heartbeats stop (systemd restarts it: back within this + 30 s with the shipped units). Keep it above your GPU's slowest chunk: a chunk is at most engine.max_chunk_chars (80) characters, about 20 s of speech, so 60 s tolerates a real-time factor of 3. A long chunk never delays the heartbeat itself.", in_range(1)),
    S("limits", "max_text_chars", int, 2000, "Longest input text accepted per request.", in_range(1)),
    S("limits", "max_upload_mb", float, 20.0, "Largest upload accepted (reference audio, batch file).", in_range(0.01)),
    S("limits", "min_reference_s", float, 2.0, "Shortest reference audio accepted.", in_range(0.1)),
    S("limits", "max_reference_s", float, 30.0, "Longest reference audio accepted.", in_range(1)),
    # [gpu]
    S("gpu", "free_memory_floor_mb", int, 1024, "Below this much free GPU memory, apply pressure_policy instead of risking an OOM.", in_range(0)),
    S("gpu", "pressure_policy", str, "fallback", "fallback (synthesize at 24 kHz) | refuse (503).", one_of("fallback", "refuse")),
    S("gpu", "clear_after_request", bool, False, "Run clear_gpu_memory() after every request (slower, steadier memory)."),
    # [paths]
    S("paths", "state_dir", str, "/var/lib/glmtts", "Batch jobs, saved voices, watchdog state, incidents, alert spool.", absolute_path),
    S("paths", "log_dir", str, "/var/log/glmtts", "access.log and error.log (written by systemd/supervisord).", absolute_path),
    S("paths", "prompt_root", str, "/var/lib/glmtts/prompts", "Batch reference audio must live inside this directory.", absolute_path),
    S("paths", "output_dir", str, "/var/lib/glmtts/outputs", "Batch outputs.", absolute_path),
    # [batch]
    S("batch", "retention_days", float, 7.0, "Finished jobs and the UI's cached uploads/results (paths.state_dir/"
      "cache) older than this are pruned (glmtts batch prune; the service prunes its cache hourly).", in_range(0)),
    S("batch", "max_tasks", int, 10000, "Most tasks in one batch file.", in_range(1)),
    S("batch", "max_line_bytes", int, 65536, "Longest JSONL line accepted.", in_range(256)),
    S("batch", "lease_s", float, 30.0, "A replica holds a job by a lease renewed every lease_s/3; a lease not renewed for this long (a replica killed with kill -9 on another host) lets another replica on the same state_dir take the job over (on the same node a dead replica is taken over at once).", in_range(3, 3600)),
    # [watchdog]
    S("watchdog", "url", str, "", "Base URL of the service to probe; \"\" = http://server.host:server.port (follows the port; a wildcard host is probed on loopback).", url_or_empty),
    S("watchdog", "unit", str, "glmtts", "systemd unit or supervisord program name of the service."),
    S("watchdog", "instances", list, [], "Extra instances to watch, each \"UNIT=URL\" (e.g. \"glmtts@0=http://127.0.0.1:7860\")."),
    S("watchdog", "manager", str, "auto", "systemd | supervisor | auto.", one_of("systemd", "supervisor", "auto")),
    S("watchdog", "supervisor_conf", str, "", "supervisord.conf used by supervisorctl (manager supervisor); \"\" = its default.", absolute_path_or_empty),
    S("watchdog", "interval_s", int, 300, "Seconds between cycles of `glmtts-watchdog run`.", in_range(1)),
    S("watchdog", "probe_timeout_s", float, 10.0, "Timeout of one /healthz probe.", in_range(0.1)),
    S("watchdog", "probe_retries", int, 3, "Probes within one cycle before the service is called unhealthy.", in_range(1, 20)),
    S("watchdog", "probe_retry_interval_s", float, 5.0, "Spacing between those probes.", in_range(0)),
    S("watchdog", "max_remediations", int, 3, "Remediations per runbook per window; beyond that escalate and stop acting.", in_range(1)),
    S("watchdog", "remediation_window_s", int, 3600, "Window for max_remediations.", in_range(60)),
    S("watchdog", "disk_free_floor_mb", int, 1024, "Less free space than this on log/state/output dirs is an enospc incident.", in_range(0)),
    S("watchdog", "gpu_reset", bool, False, "Allow `nvidia-smi -r` (root, no other process on the GPU)."),
    S("watchdog", "ready_timeout_s", float, 600.0, "How long wait_ready waits for /healthz after a restart.", in_range(1)),
    S("watchdog", "smoke_text", str, "你好，这是一次自检。", "Short Mandarin text the smoke test synthesizes."),
    S("watchdog", "smoke_timeout_s", float, 60.0, "Latency budget of the smoke test.", in_range(1)),
    S("watchdog", "api_key", str, "", "Bearer key the smoke test uses when server.api_keys is set."),
    S("watchdog", "runbooks_dir", str, "", "Directory of the runbooks the watchdog executes; \"\" = the runbooks/ shipped with glmtts.", absolute_path_or_empty),
    S("watchdog", "kernel_log", str, "", "Kernel log scanned for NVRM Xid lines; \"\" = /var/log/kern.log when readable.", absolute_path_or_empty),
    # [alerts]
    S("alerts", "urls", list, [], "apprise URLs: mailto://, wecombot://, slack://, json://..."),
    S("alerts", "min_severity", str, "warning", "Send alerts at or above: info | warning | critical.", one_of("info", "warning", "critical")),
    S("alerts", "timeout_s", float, 10.0, "Bound on one delivery attempt.", in_range(0.1)),
]
del S

SECTIONS = list(dict.fromkeys(s.section for s in SETTINGS))
_BY_NAME = {s.name: s for s in SETTINGS}


def _coerce(setting, value, *, from_env=False):
    """Convert a TOML or environment value to the setting's type (ValueError if not)."""
    t = setting.type
    if from_env:
        if t is bool:
            low = value.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError("allowed: true | false")
        if t is list:
            value = value.strip()
            if value.startswith("["):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    raise ValueError("allowed: a JSON list of strings or a comma-separated list") from None
            else:
                return [v.strip() for v in value.split(",") if v.strip()]
        elif t is int:
            try:
                return int(value)
            except ValueError:
                raise ValueError("allowed: an integer") from None
        elif t is float:
            try:
                return float(value)
            except ValueError:
                raise ValueError("allowed: a number") from None
        else:
            return value
    if t is bool:
        if not isinstance(value, bool):
            raise ValueError("allowed: true | false")
        return value
    if t is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("allowed: an integer")
        return value
    if t is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("allowed: a number")
        return float(value)
    if t is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("allowed: a list of strings")
        return list(value)
    if not isinstance(value, str):
        raise ValueError("allowed: a string")
    return value


def _check(setting, raw, origin, *, from_env=False):
    try:
        return setting.validate(_coerce(setting, raw, from_env=from_env))
    except ValueError as e:
        raise ConfigError("%s: invalid value %r for %s; %s" % (origin, raw, setting.name, e)) from None


@dataclass
class Settings:
    """Effective configuration. ``settings.server.port``; ``sources[name]`` says where
    each value came from (default, file path, or environment variable)."""

    values: dict = field(default_factory=dict)
    sources: dict = field(default_factory=dict)
    config_path: str = ""

    def __post_init__(self):
        for section in SECTIONS:
            ns = SimpleNamespace(**{s.key: self.values[s.name] for s in SETTINGS if s.section == section})
            setattr(self, section, ns)

    def get(self, name):
        return self.values[name]

    def replace(self, **overrides):
        """A copy with ``section__key=value`` overrides (validated)."""
        values = dict(self.values)
        sources = dict(self.sources)
        if values["watchdog.url"] == service_url(values["server.host"], values["server.port"]) \
                and "watchdog__url" not in overrides:
            values["watchdog.url"] = ""  # derived: re-derive from the new host/port below
        for k, v in overrides.items():
            name = k.replace("__", ".", 1)
            if name not in _BY_NAME:
                raise ConfigError("unknown setting %s" % name)
            values[name] = _check(_BY_NAME[name], v, "override")
            sources[name] = "override"
        _derive(values)
        return Settings(values, sources, self.config_path)


def load(path=None, env=None, *, require_file=False):
    """Build Settings. ``path`` None means default_config_path(): $GLMTTS_CONFIG, else
    /etc/glmtts/glmtts.toml, else ./run/glmtts.toml (a missing default file is fine:
    defaults apply). ``env`` defaults to os.environ."""
    env = os.environ if env is None else env
    explicit = path is not None or "GLMTTS_CONFIG" in env
    path = path if path is not None else default_config_path(env)
    values = {s.name: s.default for s in SETTINGS}
    sources = {s.name: "default" for s in SETTINGS}

    data = None
    if path:
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            if explicit or require_file:
                raise ConfigError("config file %s does not exist (set GLMTTS_CONFIG or create it)" % path) from None
        except PermissionError:
            raise ConfigError("config file %s is not readable by this user" % path) from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError("config file %s is not valid TOML: %s" % (path, e)) from None
    if data is not None:
        for section, table in data.items():
            if section not in SECTIONS:
                raise ConfigError("%s: unknown section [%s]; allowed: %s" % (path, section, ", ".join(SECTIONS)))
            if not isinstance(table, dict):
                raise ConfigError("%s: %s must be a [section] table" % (path, section))
            for key, raw in table.items():
                name = "%s.%s" % (section, key)
                setting = _BY_NAME.get(name)
                if setting is None:
                    known = ", ".join(s.key for s in SETTINGS if s.section == section)
                    raise ConfigError("%s: unknown key %s; keys of [%s]: %s" % (path, name, section, known))
                values[name] = _check(setting, raw, path)
                sources[name] = path

    env_names = {s.env: s for s in SETTINGS}
    for var, raw in env.items():
        if not var.startswith(ENV_PREFIX) or var == "GLMTTS_CONFIG":
            continue
        setting = env_names.get(var)
        if setting is None:
            section = var[len(ENV_PREFIX):].split("_", 1)[0].lower()
            if section in SECTIONS:
                raise ConfigError("environment: unknown setting %s; see `glmtts config show` for the names" % var)
            continue  # GLMTTS_SOMETHING_ELSE belongs to someone else (e.g. GLMTTS_TEST_*)
        values[setting.name] = _check(setting, raw, "environment %s" % var, from_env=True)
        sources[setting.name] = "env %s" % var

    _derive(values)
    settings = Settings(values, sources, path if data is not None else "")
    _check_combination(settings)
    return settings


def default_config_path(env, cwd=None):
    """$GLMTTS_CONFIG, else /etc/glmtts/glmtts.toml, else ./run/glmtts.toml when it exists
    (the `make run` instance of the checkout the tool runs from)."""
    if "GLMTTS_CONFIG" in env:
        return env["GLMTTS_CONFIG"]
    if os.path.exists(DEFAULT_CONFIG_PATH):
        return DEFAULT_CONFIG_PATH
    local = os.path.join(cwd or os.getcwd(), LOCAL_RUN_CONFIG)
    return os.path.abspath(local) if os.path.isfile(local) else DEFAULT_CONFIG_PATH


def service_url(host, port):
    """Where a client on this host reaches a service bound to host:port."""
    if host in ("0.0.0.0", "localhost"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return "http://%s:%d" % ("[%s]" % host if ":" in host else host, port)


# The one stop budget. Every manager's stop timeout is this number: systemd's
# TimeoutStopSec, supervisord's stopwaitsecs, `docker stop -t`, the pod's
# terminationGracePeriodSeconds (plus its preStop), Fly's kill_timeout. The margin covers
# what follows the drain: closing idle connections, the lifespan shutdown, log flush.
STOP_MARGIN_S = 10


def stop_grace_s(settings=None):
    """Seconds a manager must wait after SIGTERM before SIGKILL: drain_delay_s +
    drain_timeout_s + STOP_MARGIN_S, rounded up (the defaults give 75)."""
    if settings is None:
        delay, timeout = _BY_NAME["server.drain_delay_s"].default, _BY_NAME["server.drain_timeout_s"].default
    else:
        delay, timeout = settings.server.drain_delay_s, settings.server.drain_timeout_s
    return int(math.ceil(delay + timeout + STOP_MARGIN_S))


def _derive(values):
    # An unset watchdog.url follows server.port, so moving the port (GLMTTS_SERVER_PORT,
    # an edited config) never leaves the watchdog probing the old one.
    if not values["watchdog.url"]:
        values["watchdog.url"] = service_url(values["server.host"], values["server.port"])


def _check_combination(settings):
    srv = settings.server
    loopback = srv.host in ("localhost",) or (srv.host not in ("0.0.0.0", "::") and ipaddress.ip_address(srv.host).is_loopback)
    if not loopback and not srv.api_keys and not srv.allow_public_without_keys:
        raise ConfigError(
            "server.host = %r is not a loopback address and server.api_keys is empty: "
            "set api_keys, bind 127.0.0.1, or set server.allow_public_without_keys = true" % srv.host)
    if settings.engine.name == "glmtts" and not settings.engine.glmtts_home:
        raise ConfigError("engine.name = 'glmtts' needs engine.glmtts_home (the official GLM-TTS checkout with ckpt/)")


# -- rendering ----------------------------------------------------------------------

def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def example_toml():
    """The example configuration, generated from SETTINGS (ops/glmtts.toml.example)."""
    out = ["# glmtts configuration: /etc/glmtts/glmtts.toml (GLMTTS_CONFIG overrides the path).",
           "# Generated by `glmtts config example` from glmtts/config.py; every key shows its default.",
           "# Any key can be overridden by the environment: GLMTTS_<SECTION>_<KEY>, e.g. GLMTTS_SERVER_PORT=7861."]
    for section in SECTIONS:
        out.append("")
        out.append("[%s]" % section)
        for s in SETTINGS:
            if s.section == section:
                out.append("# %s" % s.doc)
                out.append("%s = %s" % (s.key, _toml_value(s.default)))
    return "\n".join(out) + "\n"


def markdown_table():
    rows = ["| key | default | env | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        rows.append("| `%s` | `%s` | `%s` | %s |" % (s.name, _toml_value(s.default), s.env, s.doc.replace("|", "\\|")))
    return "\n".join(rows) + "\n"


def show(settings, mask_secrets=True):
    """Effective configuration with the origin of each value, as TOML with comments."""
    out = []
    if settings.config_path:
        out.append("# config file: %s" % settings.config_path)
    else:
        out.append("# config file: none (defaults and environment only)")
    for section in SECTIONS:
        out.append("")
        out.append("[%s]" % section)
        for s in SETTINGS:
            if s.section != section:
                continue
            value = settings.values[s.name]
            if mask_secrets and value and s.key in ("api_keys", "api_key", "urls"):
                value = ["****"] * len(value) if isinstance(value, list) else "****"
            origin = settings.sources[s.name]
            if s.name == "watchdog.url" and value == service_url(settings.server.host, settings.server.port):
                origin += " (follows server.port)"
            out.append("%s = %s  # from %s" % (s.key, _toml_value(value), origin))
    return "\n".join(out) + "\n"
