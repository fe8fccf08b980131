#!/usr/bin/env bash
# `make run`: the service on the embedded engine under supervisord, in the foreground;
# `make status`, `make stop` (this script with `status` / `stop`).
# Everything lives under ./run: glmtts.toml (generated once; edit it freely),
# supervisord.conf (ops/supervisord.conf filled in, its stopwaitsecs the drain budget of
# glmtts.toml, config.stop_grace_s; rewritten each run), state/, log/
# (access.log, error.log, supervisord.log), prompts/, outputs/. Ctrl-C stops it.
# The tools run from the checkout find ./run/glmtts.toml themselves: no exports needed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# GLMTTS_RUN_DIR moves everything elsewhere (the tests use it); default ./run
RUN=${GLMTTS_RUN_DIR:-$ROOT/run}
PY=.venv/bin/python
LOCAL=("$PY" -m glmtts.localrun --run "$RUN" --root "$ROOT")

case "${1:-run}" in
  status) exec "${LOCAL[@]}" status ;;
  stop) exec "${LOCAL[@]}" stop ;;
  run) ;;
  *) echo "usage: $0 [run|status|stop]" >&2; exit 2 ;;
esac

if pid=$(cat "$RUN/supervisord.pid" 2>/dev/null) && grep -qa supervisord "/proc/$pid/cmdline" 2>/dev/null; then
  echo "glmtts: already running from $RUN (supervisord pid $pid); see \`make status\`, \`make stop\`" >&2
  exit 1
fi

# GLMTTS_SERVER_PORT is written into run/glmtts.toml: the tools read only the file.
"${LOCAL[@]}" prepare ${GLMTTS_SERVER_PORT:+--port "$GLMTTS_SERVER_PORT"}
# supervisord's programs inherit this environment (the rendered conf needs none of it).
export GLMTTS_CONFIG=$RUN/glmtts.toml GLMTTS_HOME=$ROOT GLMTTS_PYTHON=$ROOT/$PY \
       GLMTTS_LOGS=$RUN/log GLMTTS_RUN=$RUN
.venv/bin/glmtts config show >/dev/null  # a config error stops here, with the key named

URL=$("$PY" -c 'from glmtts import config; s = config.load(); print(config.service_url(s.server.host, s.server.port) + "/")')
echo "glmtts: starting under supervisord; UI and API at $URL"
echo "        logs: $RUN/log/{access,error,supervisord}.log; make status, make stop"

# Says ready only when /healthz is answered by the pid supervisord started for glmtts, then
# leaves a Mandarin sample in run/hello.wav; if the service exits first (a taken port), it
# prints one line naming the owner and stops supervisord.
"${LOCAL[@]}" ready &
watcher=$!
rc=0
.venv/bin/supervisord -c "$RUN/supervisord.conf" || rc=$?
wrc=0
wait "$watcher" || wrc=$?
[ "$wrc" -ne 0 ] && exit "$wrc"
exit "$rc"
