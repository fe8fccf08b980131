"""`glmtts-system install|uninstall`: put glmtts on a systemd host (or take it off again).

install creates the glmtts system user and group, /etc/glmtts (config from the example,
never overwritten), /var/log/glmtts and /var/lib/glmtts with owners and modes, installs
the systemd units (with the deploy tree substituted for /opt/glmtts) and the logrotate
file, reloads systemd, runs the preflight (the configured engine loaded and heard once
inside glmtts.service's own sandbox, see glmtts/preflight.py) and enables the watchdog
timer. Every step is printed; running it twice changes nothing the second time.

All OS side effects go through one object, ``glmtts.host.Host``: ``--dry-run`` prints the plan
without calling its mutating methods, ``--root DIR`` points every path (and useradd,
groupadd, systemctl) at a directory tree, and unit tests replace it with a fake.

The package: layout (where things go), units (rendering), plan
(install, uninstall, preflight); the console script is glmtts/cli/system/.
"""

from ..host import Host  # noqa: F401 (glmtts/host: the one OS seam)
from .layout import *  # noqa: F401,F403
from .layout import OpsError, _under, default_deploy_dir  # noqa: F401
from .plan import Plan, install, run_preflight, uninstall  # noqa: F401
from .layout import home_paths  # noqa: F401
from .layout import ENV_FILE  # noqa: F401
from .units import drop_in_text, host_stop_grace, instance_env_text, render_unit  # noqa: F401
