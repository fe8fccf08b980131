"""The service manager as the host drives it: which systemctl/supervisorctl/nvidia-smi
verbs change the system (what a dry run refuses), and the installer's systemctl, which
against a directory tree (``--root``) only enables or disables."""

import os

from .seam import changes

# Verbs that change a unit or program; everything else the watchdog runs (systemctl
# show/status/is-active, journalctl, supervisorctl status/pid/tail, nvidia-smi queries)
# only reads.
MUTATING_VERBS = {
    "systemctl": {"start", "stop", "restart", "reload", "try-restart", "reload-or-restart", "try-reload-or-restart",
                  "reset-failed", "kill", "clean", "freeze", "thaw", "enable", "disable", "reenable", "mask",
                  "unmask", "daemon-reload", "daemon-reexec", "set-property", "isolate", "link", "edit"},
    "supervisorctl": {"start", "stop", "restart", "signal", "reread", "update", "reload", "shutdown", "add",
                      "remove", "clear"},
    "nvidia-smi": {"-r", "--gpu-reset", "-pm", "--persistence-mode", "-e", "--ecc-config", "-c", "--compute-mode"},
    # the preflight's transient unit, the installer's account tools: always a change
    "systemd-run": {"*"}, "useradd": {"*"}, "userdel": {"*"}, "groupadd": {"*"}, "groupdel": {"*"},
}


def mutates(argv):
    """True when argv would change the system (a unit, a program, a GPU's state, an account)."""
    if not argv:
        return False
    verbs = MUTATING_VERBS.get(os.path.basename(argv[0]))
    if verbs is None and os.path.basename(argv[0]).startswith("python") and "supervisor.supervisorctl" in argv:
        verbs = MUTATING_VERBS["supervisorctl"]
    return bool(verbs) and ("*" in verbs or any(a in verbs for a in argv[1:]))


class Services:
    @changes("services")
    def systemctl(self, *args):
        """systemctl ARGS, raising CommandFailed. Offline (a --root tree): enable/disable
        act on the tree (--root); daemon-reload, start and stop mean nothing there."""
        if self.offline:
            if args[0] in ("enable", "disable"):
                self.run_checked(["systemctl", "--root", str(self.root)] + [a for a in args if a != "--now"])
            return
        self.run_checked(["systemctl"] + list(args))
