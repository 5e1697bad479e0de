# Environment of the embedded default: sourced by the Makefile targets and the services script.
# Everything lives under .phiflow/ in the checkout unless PHIFLOW_HOME / PHIFLOW_LAKE say otherwise.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PHIFLOW_HOME="${PHIFLOW_HOME:-$ROOT/.phiflow}"
export PHIFLOW_RECIPE="${PHIFLOW_RECIPE:-$ROOT/recipes/demo.yaml}"
export PATH="$ROOT/.venv/bin:$PATH"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$PHIFLOW_HOME/airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$ROOT/plugins"  # the phiflow dashboard (plugins/phiflow_dashboard.py)
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-4}"
export AIRFLOW__CORE__EXECUTOR="${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}"
export AIRFLOW__API__HOST="${AIRFLOW__API__HOST:-127.0.0.1}"
export AIRFLOW__API__PORT="${AIRFLOW__API__PORT:-8080}"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://${AIRFLOW__API__HOST}:${AIRFLOW__API__PORT}/execution/"
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="${AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL:-30}"
export AIRFLOW__OPENLINEAGE__NAMESPACE="${AIRFLOW__OPENLINEAGE__NAMESPACE:-phiflow}"
# JSON defaults are assigned in if-blocks: inside ${VAR:-...} their braces would end the expansion early.
if [[ -z "${AIRFLOW__OPENLINEAGE__TRANSPORT:-}" ]]; then
  export AIRFLOW__OPENLINEAGE__TRANSPORT="{\"type\": \"file\", \"log_file_path\": \"$PHIFLOW_HOME/lineage/events.jsonl\", \"append\": true}"
fi
if [[ -z "${AIRFLOW_CONN_PHIFLOW_SPARK:-}" ]]; then
  export AIRFLOW_CONN_PHIFLOW_SPARK='{"conn_type": "spark", "host": "local[2]"}'
fi
# SQLite only: wait for the write lock instead of failing (phiflow/settings.py says why).
ARGS=phiflow.settings.SQLITE_CONNECT_ARGS
if [[ "${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-sqlite}" == sqlite* ]]; then
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS="${AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS:-$ARGS}"
elif [[ "${AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS:-}" == "$ARGS" ]]; then
  unset AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS
fi
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
export PYSPARK_PYTHON="$ROOT/.venv/bin/python"
mkdir -p "$PHIFLOW_HOME/lineage" "$AIRFLOW_HOME"
