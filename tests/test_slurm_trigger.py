"""The Slurm path against fake `sbatch`/`squeue`/`sacct` executables on PATH (the cluster is an outside
boundary): the trigger polls until the job leaves the queue and reports sacct's final state; the
sbatch script is rendered from the run JSON and submitted."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest

from operators.triggers import SlurmJobTrigger

pytestmark = pytest.mark.airflow


def fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """squeue says PENDING, RUNNING, RUNNING, then nothing; sacct answers with $SACCT_STATE."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake(bin_dir, "squeue", f"""n=$(cat {tmp_path}/polls 2>/dev/null || echo 0); echo $((n+1)) > {tmp_path}/polls
case $n in 0) echo PENDING;; 1|2) echo RUNNING;; *) ;; esac
echo "$@" >> {tmp_path}/squeue.args
""")
    fake(bin_dir, "sacct", 'echo "$@" >> ' + str(tmp_path) + '/sacct.args; printf "%s\\n" "$SACCT_STATE"\n')
    fake(bin_dir, "sbatch", f'cp "$2" {tmp_path}/submitted.sbatch; echo "4242;cluster"\n')
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return tmp_path


async def first_event(trigger: SlurmJobTrigger) -> dict:
    async for event in trigger.run():
        return event.payload
    raise AssertionError("no event")


def test_trigger_waits_for_the_job_then_succeeds(slurm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SACCT_STATE", "COMPLETED|0:0")
    event = asyncio.run(first_event(SlurmJobTrigger("4242", poll_s=0.01)))
    assert event == {"status": "success", "job_id": "4242", "state": "COMPLETED", "exit_code": "0:0"}
    assert (slurm / "polls").read_text().strip() == "4"  # pending, running x2, gone
    assert "-j 4242" in (slurm / "squeue.args").read_text() and "-j 4242" in (slurm / "sacct.args").read_text()


def test_trigger_reports_a_failed_job(slurm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SACCT_STATE", "CANCELLED by 1000|0:15")
    event = asyncio.run(first_event(SlurmJobTrigger("4242", poll_s=0.01)))
    assert event["status"] == "error" and event["state"] == "CANCELLED"


def test_trigger_gives_up_when_accounting_never_records_the_job(slurm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SACCT_STATE", "")
    event = asyncio.run(first_event(SlurmJobTrigger("4242", poll_s=0.01)))
    assert event["status"] == "error" and "no record" in event["message"]


def test_trigger_serializes_for_the_triggerer() -> None:
    path, kwargs = SlurmJobTrigger("7", poll_s=5, lease_path="/lake/a/_LEASE").serialize()
    assert path == "operators.triggers.SlurmJobTrigger"
    assert kwargs == {"job_id": "7", "poll_s": 5, "lease_path": "/lake/a/_LEASE"}


def test_trigger_renews_the_attempts_lease_while_it_waits(slurm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SACCT_STATE", "COMPLETED|0:0")
    lease = slurm / "attempt" / "_LEASE"
    lease.parent.mkdir()
    lease.write_text("{}")
    os.utime(lease, (1, 1))  # stale: the worker that created the attempt is long gone
    asyncio.run(first_event(SlurmJobTrigger("4242", poll_s=0.01, lease_path=str(lease))))
    assert lease.stat().st_mtime > 1e9  # renewed while the job was queued and running


def test_sbatch_script_from_the_phi4_run(slurm: Path) -> None:
    from operators.training import submit_slurm
    from phiflow.recipe import load_recipe
    from phiflow.run_config import RunConfig, pretrain_config

    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "phi4.yaml")
    cfg = pretrain_config(recipe, [(1.0, "/shared/tokens/web")], 100_277, 100_276, "/shared/ckpt")
    work = slurm / "work"
    work.mkdir()
    assert submit_slurm(recipe, cfg, str(work)) == "4242"
    script = (slurm / "submitted.sbatch").read_text()
    assert "#SBATCH --nodes=240" in script and "#SBATCH --gpus-per-node=8" in script
    assert "--nproc-per-node 8" in script and f"--config {work}/run.json" in script
    saved = RunConfig.load(work / "run.json")
    assert saved.model.padded_vocab_size(saved.parallel.tp) == 100_352
    assert (saved.parallel.tp, saved.parallel.pp, saved.batch.global_batch_size) == (4, 2, 5760)


def test_the_hook_reports_a_refused_submission(slurm: Path) -> None:
    """The operator and the trigger share SlurmHook; a refused sbatch is an error naming sbatch's reason."""
    from airflow.sdk.exceptions import AirflowException

    from operators.slurm_hook import SlurmHook

    fake(slurm / "bin", "sbatch", 'echo "sbatch: error: invalid partition specified: h100" >&2; exit 1\n')
    with pytest.raises(AirflowException, match=r"sbatch failed \(1\): sbatch: error: invalid partition"):
        SlurmHook().submit(slurm / "job.sbatch")
    fake(slurm / "bin", "sbatch", 'echo "77;cluster"\n')
    assert SlurmHook().submit(slurm / "job.sbatch") == "77"
