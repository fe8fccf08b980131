"""The units and files install writes, rendered for this host: the deploy tree for
/opt/glmtts, the stop budget of this host's config, the drop-in for hidden paths."""

import re

from .. import config
from ..errors import GlmttsError
from .layout import BASE_PORT, CONFIG_FILE, ENV_FILE, HOME_DIRS, PLACEHOLDER, _under


def render_unit(text, deploy_dir, stop_grace=None):
    """The unit for this host: the deploy tree for /opt/glmtts and, when given, the stop
    budget (config.stop_grace_s of this host's config) for the shipped TimeoutStopSec=."""
    text = text.replace(PLACEHOLDER, str(deploy_dir))
    if stop_grace is not None:
        text = re.sub(r"(?m)^TimeoutStopSec=\d+$", "TimeoutStopSec=%d" % stop_grace, text)
    return text



def host_stop_grace(host):
    """(seconds, note): config.stop_grace_s() of the config the units will run with
    (glmtts.toml, and GLMTTS_* lines of glmtts.env, which the unit reads too). Defaults
    when there is no file yet; defaults and a note when it does not load."""
    env = {}
    if host.exists(ENV_FILE):
        for line in host.read(ENV_FILE).splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and key.startswith("GLMTTS_SERVER_DRAIN_"):
                env[key] = value.strip().strip('"').strip("'")
    if not host.exists(CONFIG_FILE) and not env:
        return config.stop_grace_s(), "defaults"
    try:
        settings = config.load(str(host.path(CONFIG_FILE)) if host.exists(CONFIG_FILE) else "", env=env)
    except GlmttsError as e:
        return config.stop_grace_s(), "defaults (%s does not load: %s)" % (CONFIG_FILE, e)
    return config.stop_grace_s(settings), "server.drain_delay_s %g + drain_timeout_s %g + %d" % (
        settings.server.drain_delay_s, settings.server.drain_timeout_s, config.STOP_MARGIN_S)


def drop_in_text(paths):
    text = ("# Written by glmtts-system install: the deploy tree or its Python lives under a home or\n"
            "# tmp directory, which ProtectHome=/PrivateTmp= hide. Bind back only these, read-only.\n"
            "[Service]\n")
    if any(_under(p, HOME_DIRS) for p in paths):
        text += "ProtectHome=tmpfs\n"  # empty homes instead of none, so the binds have a place
    return text + "BindReadOnlyPaths=%s\n" % " ".join(paths)


def instance_env_text(n):
    return ("# glmtts@%d: its own port (7860 + GPU index); CUDA_VISIBLE_DEVICES=%d is set by the unit.\n"
            "GLMTTS_SERVER_PORT=%d\n" % (n, n, BASE_PORT + n))


