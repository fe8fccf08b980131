"""Find who holds the service's port. Only a process of our own unit (a stale child left
behind) is terminated; anyone else's process is reported, never touched."""

import signal

from .base import FAILED, OK, Action, StepResult


class FreePort(Action):
    name = "free_port"
    summary = "identify the port's owner; terminate it only if it belongs to our unit, otherwise report it"
    params = {"grace_s": (float, 10.0)}
    mutating = False  # it decides itself what dry-run allows: reporting the owner is read-only

    def run(self, ctx, grace_s=10.0):
        host, port = ctx.host, ctx.instance.port
        owners = host.port_owners(port)
        if not owners:
            return StepResult(OK, "port %d is free" % port, {"owners": []})
        ours = set(ctx.manager.unit_pids(ctx.instance.unit)) - host.own_pids()
        infos = [host.process(p) or {"pid": p} for p in owners]
        foreign = [i for i in infos if i["pid"] not in ours]
        if foreign:
            who = "; ".join("pid %s %s (user %s): %s" % (i["pid"], i.get("name", "?"), i.get("user", "?"), i.get("cmdline", "?")) for i in foreign)
            return StepResult(FAILED, "port %d is held by a process that is not ours, not touching it: %s. "
                              "Ask its owner to stop it or change server.port" % (port, who), {"owners": infos})
        if ctx.dry_run:
            return StepResult("dry_run", "would terminate our stale process(es) %s holding port %d" % (owners, port))
        for p in owners:
            try:
                host.kill(p, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = host.clock.monotonic() + grace_s
        while host.clock.monotonic() < deadline and any(host.alive(p) for p in owners):
            host.clock.sleep(0.2)
        for p in owners:
            if host.alive(p):
                try:
                    host.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return StepResult(OK, "terminated our stale process(es) %s on port %d" % (owners, port), {"owners": infos})

    def manual(self, ctx, **params):
        return "ss -ltnp 'sport = :%d'   # then stop that process only if it is ours" % ctx.instance.port

