"""LLMConnectionHook: the recipe's LLM connection (an OpenAI-compatible server and its key) handed to
the Spark job that calls the model.

The job runs in spark-submit's processes, where the core reads the connection without Airflow
(phiflow.llm.secrets): this hook resolves it through Airflow's connection store and secrets backends
on the worker and exports it as Airflow's own `AIRFLOW_CONN_<ID>` variable into the job's environment
(the Spark provider forwards `env_vars` to the driver on YARN and Kubernetes too). Airflow masks the
connection's password in task logs once it has been read through the hook.
"""

from __future__ import annotations

from airflow.sdk import BaseHook

from phiflow.llm.secrets import connection_env_var


class LLMConnectionHook(BaseHook):
    """One LLM connection, as the environment a stage's job needs."""

    conn_name_attr = "llm_conn_id"
    default_conn_name = "phiflow_llm"
    conn_type = "http"
    hook_name = "phiflow LLM endpoint"

    def __init__(self, llm_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.llm_conn_id = llm_conn_id

    def get_conn(self):  # -> airflow Connection
        return self.get_connection(self.llm_conn_id)

    def job_environment(self) -> dict[str, str]:
        """`{AIRFLOW_CONN_<ID>: <connection as JSON>}` for spark-submit's environment."""
        return {connection_env_var(self.llm_conn_id): self.get_conn().as_json()}
