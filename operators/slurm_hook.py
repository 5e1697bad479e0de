"""SlurmHook: Slurm's command line behind one object, as the Spark provider puts spark-submit behind
SparkSubmitHook. MegatronTrainOperator submits a job with it (`sbatch --parsable`); SlurmJobTrigger
polls the same hook from the triggerer (`squeue` while the job is queued, `sacct` once it has left).
The cluster is reached through its CLI on PATH: the submitting host is a Slurm login node.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowException


class SlurmHook(BaseHook):
    """Submit a batch script, then ask for the job's state."""

    def get_conn(self) -> None:
        """No connection: the CLI talks to the cluster's controller itself."""

    def submit(self, script: str | Path) -> str:
        """`sbatch --parsable <script>`: the job id (a federated cluster's `id;cluster` cut to the id)."""
        out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise AirflowException(f"sbatch failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
        return out.stdout.strip().split(";")[0]

    async def queue_state(self, job_id: str) -> str | None:
        """The job's state while Slurm still queues it (PENDING, RUNNING, COMPLETING...), else None."""
        rc, out = await _run("squeue", "-h", "-j", job_id, "-o", "%T")
        if rc != 0 and "Invalid job id" not in out:
            raise RuntimeError(f"squeue failed ({rc}): {out}")
        return out.splitlines()[0].strip() if rc == 0 and out else None

    async def final_state(self, job_id: str) -> tuple[str, str] | None:
        """(state, exit code) of a finished job from accounting, or None when not recorded yet."""
        rc, out = await _run("sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State,ExitCode")
        if rc != 0:
            raise RuntimeError(f"sacct failed ({rc}): {out}")
        for line in out.splitlines():
            if line.strip():
                state, _, code = line.strip().partition("|")
                return state.split()[0], code  # "CANCELLED by 123" -> CANCELLED
        return None


async def _run(*cmd: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace").strip()
