"""TERM then KILL the processes of the service, and only those: the unit's cgroup or its
MainPID and descendants as the manager reports them. Never by name, never our own
process or its ancestors, never PID 1."""

import signal

from .base import FAILED, OK, Action, StepResult


class KillUnitProcesses(Action):
    name = "kill_unit_processes"
    summary = "SIGTERM (and SIGCONT, for a stopped process) the unit's processes, SIGKILL what is left after grace_s"
    params = {"grace_s": (float, 10.0)}

    def targets(self, ctx):
        own = ctx.host.own_pids()
        return [p for p in ctx.manager.unit_pids(ctx.instance.unit) if p > 1 and p not in own]

    def run(self, ctx, grace_s=10.0):
        host = ctx.host
        # The main pid before the kill lets the restart step tell a process the manager
        # has already respawned from the one we killed (one restart per remediation).
        main_pid = ctx.manager.status(ctx.instance.unit).main_pid
        pids = self.targets(ctx)
        if not pids:
            return StepResult(OK, "no process of %s is running" % ctx.instance.unit, {"pids": [], "main_pid": main_pid})
        for sig in (signal.SIGTERM, signal.SIGCONT):
            for p in pids:
                try:
                    host.kill(p, sig)
                except ProcessLookupError:
                    pass
        deadline = host.clock.monotonic() + grace_s
        left = pids
        while left and host.clock.monotonic() < deadline:
            host.clock.sleep(0.2)
            left = [p for p in left if host.alive(p)]
        for p in left:
            try:
                host.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for _ in range(25):
            left = [p for p in left if host.alive(p)]
            if not left:
                break
            host.clock.sleep(0.2)
        if left:
            return StepResult(FAILED, "still alive after SIGKILL: %s (uninterruptible? check `cat /proc/PID/stack`)" % left,
                              {"pids": pids, "main_pid": main_pid})
        return StepResult(OK, "terminated %s" % pids, {"pids": pids, "main_pid": main_pid})

    def manual(self, ctx, **params):
        if ctx.manager.name == "systemd":
            return "systemctl kill --signal=SIGTERM %s; sleep 10; systemctl kill --signal=SIGKILL %s" % ((ctx.instance.unit,) * 2)
        return "kill -TERM <MainPID of %s>; sleep 10; kill -KILL <MainPID>" % ctx.instance.unit
