"""Where glmtts goes on a server: the user, the directories, the unit and config files,
and which of the deploy tree's paths the units' sandbox hides (so a drop-in binds them back)."""

import os
from pathlib import Path

from .. import watchdog_token
from ..errors import GlmttsError


USER = GROUP = "glmtts"
PLACEHOLDER = "/opt/glmtts"  # deploy-tree path written in the ops/*.service templates
UNITS = ("glmtts.service", "glmtts@.service", "glmtts-watchdog.service", "glmtts-watchdog.timer")
SERVICE_UNITS = ("glmtts.service", "glmtts@.service", "glmtts-watchdog.service")
TIMER = "glmtts-watchdog.timer"
UNIT_DIR = "/etc/systemd/system"
LOGROTATE_FILE = "/etc/logrotate.d/glmtts"
ETC_DIR = "/etc/glmtts"
CONFIG_FILE = "/etc/glmtts/glmtts.toml"
TOKEN_FILE = "/etc/glmtts/" + watchdog_token.FILENAME  # beside CONFIG_FILE, where both sides look
LOG_DIR = "/var/log/glmtts"
STATE_DIR = "/var/lib/glmtts"
BASE_PORT = 7860
# ProtectHome= hides these from the units, PrivateTmp= hides TMP_DIRS; anything the
# service needs under them is bound back read-only by a drop-in (e.g. a pyenv interpreter
# under /root, or a checkout under /var/tmp).
HOME_DIRS = ("/home", "/root", "/run/user")
TMP_DIRS = ("/tmp", "/var/tmp")
DROP_IN = "10-deploy-paths.conf"


class OpsError(GlmttsError):
    code = "ops_error"



def default_deploy_dir():
    """The tree this module runs from, when it is a checkout (editable install)."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "service").is_dir() and (here / "ops").is_dir() else None


def _under(path, dirs):
    return any(str(path) == d or str(path).startswith(d + "/") for d in dirs)


def home_paths(deploy_dir):
    """Paths under a home or tmp directory the units need: the deploy tree itself and the
    real prefix of the venv's interpreter (a venv's python is a symlink to its base)."""
    needed = []
    python = Path(deploy_dir) / ".venv" / "bin" / "python"
    base = Path(os.path.realpath(python)).parent.parent
    for p in (Path(deploy_dir), base):
        if _under(p, HOME_DIRS + TMP_DIRS) and str(p) not in needed:
            needed.append(str(p))
    return needed



ENV_FILE = "/etc/glmtts/glmtts.env"

