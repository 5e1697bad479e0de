#!/usr/bin/env bash
# Start or stop the Airflow services of the embedded default (api-server, scheduler, dag-processor,
# triggerer) as separate processes, with pid files under $AIRFLOW_HOME/run, so that `stop` ends
# exactly these processes (and their children) and nothing else; `stop` also ends the local Spark
# Connect server that the stage tasks started and shared (spark_jobs/engine/connect_server.py).
# Network: the api-server listens on 127.0.0.1 only; the scheduler and the triggerer run without
# their log servers (`serve-logs` binds every interface and has no setting to change that): on one
# machine the api-server reads task and trigger logs from $AIRFLOW_HOME/logs directly.
# Secrets: everything under $AIRFLOW_HOME is the user's alone (umask 077, folders 700, files 600):
# airflow.db, airflow.cfg (its secret keys) and the admin password file, which is written here
# before the api-server starts, so Airflow never generates one and never prints it to its log.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
umask 077
RUN="$AIRFLOW_HOME/run"
SERVICES=(api-server scheduler dag-processor triggerer)
PASSWORDS="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"
mkdir -p "$RUN" "$AIRFLOW_HOME/logs"
chmod 700 "$PHIFLOW_HOME" "$AIRFLOW_HOME"

alive() { [[ -f "$RUN/$1.pid" ]] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

start() {
  if [[ ! -s "$PASSWORDS" ]]; then
    python -c "import json, secrets; print(json.dumps({'admin': secrets.token_urlsafe(12)}))" >"$PASSWORDS"
  fi
  airflow db migrate >"$AIRFLOW_HOME/logs/db-migrate.log" 2>&1
  chmod -R go-rwx "$AIRFLOW_HOME"  # also what an older checkout left readable
  for s in "${SERVICES[@]}"; do
    if alive "$s"; then echo "$s already running (pid $(cat "$RUN/$s.pid"))"; continue; fi
    local args=()
    if [[ "$s" == scheduler || "$s" == triggerer ]]; then args=(--skip-serve-logs); fi
    # setsid: each service leads its own process group, so stop can signal the whole group.
    setsid airflow "$s" "${args[@]}" >"$AIRFLOW_HOME/logs/$s.log" 2>&1 < /dev/null &
    echo $! >"$RUN/$s.pid"
  done
  local url="http://${AIRFLOW__API__HOST}:${AIRFLOW__API__PORT}"
  for _ in $(seq 1 90); do
    if curl -fsS "$url/api/v2/monitor/health" >/dev/null 2>&1; then break; fi
    sleep 1
  done
  curl -fsS "$url/api/v2/monitor/health" >/dev/null || { echo "api-server did not become healthy; see $AIRFLOW_HOME/logs" >&2; exit 1; }
  # The password goes to this terminal only (never to a log file): it is read back from the 600 file.
  echo "Airflow UI:   $url   (user admin, password: $(python -c "import json,sys; print(json.load(open(sys.argv[1]))['admin'])" "$PASSWORDS" 2>/dev/null || echo "see $PASSWORDS"))"
  echo "DAGs from:    $AIRFLOW__CORE__DAGS_FOLDER   recipe $PHIFLOW_RECIPE"
  echo "Logs:         $AIRFLOW_HOME/logs/   stop with: make airflow-stop"
}

stop() {
  for s in "${SERVICES[@]}"; do
    if alive "$s"; then
      pid="$(cat "$RUN/$s.pid")"
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
      for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL -- "-$pid" 2>/dev/null || true
      echo "stopped $s (pid $pid)"
    fi
    rm -f "$RUN/$s.pid"
  done
  # the local Spark Connect server the stage tasks shared (spark_jobs/engine/connect_server.py), if any
  python -m spark_jobs.engine.connect_server stop
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) for s in "${SERVICES[@]}"; do alive "$s" && echo "$s running (pid $(cat "$RUN/$s.pid"))" || echo "$s stopped"; done ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
