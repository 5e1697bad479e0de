"""SlurmJobTrigger: waits in the triggerer for a Slurm job, polling `squeue` then `sacct` (SlurmHook).

The worker slot is free while a pretraining job runs for weeks; the trigger holds only a job id.
`squeue` answers while the job is pending or running; once it has left the queue, `sacct` gives the
final state (retried a few times: accounting can lag the queue by seconds). Each poll renews the
attempt folder's lease (`lease_path`), so the lake's garbage collection leaves the job's output alone
while it is queued or running, though the worker that created the attempt is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from operators.slurm_hook import SlurmHook

SUCCESS = {"COMPLETED"}
ACCOUNTING_RETRIES = 5


class SlurmJobTrigger(BaseTrigger):
    """Fires one event when the job leaves the queue: status success (COMPLETED) or error."""

    def __init__(self, job_id: str, poll_s: float = 60.0, lease_path: str | None = None) -> None:
        super().__init__()
        self.job_id = str(job_id)
        self.poll_s = poll_s
        self.lease_path = lease_path

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__name__}", {
            "job_id": self.job_id, "poll_s": self.poll_s, "lease_path": self.lease_path}

    def _renew_lease(self) -> None:
        if self.lease_path:
            with contextlib.suppress(FileNotFoundError):  # the attempt folder is gone: nothing to hold
                Path(self.lease_path).touch(exist_ok=True)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook, missing, last = SlurmHook(), 0, None
        while True:
            self._renew_lease()
            try:
                state = await hook.queue_state(self.job_id)
                if state is None:
                    final = await hook.final_state(self.job_id)
                    if final is not None:
                        status = "success" if final[0] in SUCCESS else "error"
                        yield TriggerEvent({"status": status, "job_id": self.job_id, "state": final[0],
                                            "exit_code": final[1]})
                        return
                    missing += 1
                    if missing > ACCOUNTING_RETRIES:
                        yield TriggerEvent({"status": "error", "job_id": self.job_id, "state": "UNKNOWN",
                                            "message": "job left the queue but sacct has no record of it"})
                        return
                elif state != last:
                    self.log.info("slurm job %s: %s", self.job_id, state)
                    last = state
            except (OSError, RuntimeError) as e:
                yield TriggerEvent({"status": "error", "job_id": self.job_id, "state": "UNKNOWN", "message": str(e)})
                return
            await asyncio.sleep(self.poll_s)
