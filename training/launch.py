"""Launch a training run under torchrun and return its metrics (what the Airflow operator calls).

No Airflow here: the operator writes nothing but the run config, calls :func:`launch`, and turns the
returned metrics (or :class:`TrainingFailed`) into task state and asset events.
"""

from __future__ import annotations

import collections
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, TextIO

from phiflow.run_config import RunConfig

REPO_ROOT = Path(__file__).resolve().parent.parent


class TrainingFailed(RuntimeError):
    """The run failed (torchrun exited non-zero, or its metrics say so: `returncode` None); the message
    carries the run's own error (e.g. the NaN step)."""

    def __init__(self, message: str, returncode: int | None, metrics: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.metrics = metrics


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def torchrun_command(
    run_path: str | os.PathLike[str], nproc: int, port: int, python: str = sys.executable
) -> list[str]:
    """``python -m torch.distributed.run`` (torchrun from the same interpreter) on 127.0.0.1."""
    return [
        python,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(port),
        "-m",
        "training.pretrain",
        "--config",
        str(run_path),  # not --run: torchrun reads it as a prefix of --run-path
    ]


def launch_env(nproc: int, cpu: bool, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the workers: this package importable; on CPU, gloo over loopback and the
    cores split between processes (oversubscribed threads make gloo collectives crawl)."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return env


def launch(
    cfg: RunConfig,
    work_dir: str | os.PathLike[str],
    dp: int = 1,
    stream: TextIO | None = sys.stdout,
    timeout_s: float | None = None,
) -> dict[str, Any]:
    """Write ``run.json`` into ``work_dir``, run torchrun with tp*pp*dp processes, stream its log
    (also kept as ``work_dir/train.log``) and return the metrics JSON."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    nproc = cfg.world_size(dp)
    cpu = gpu_count() == 0
    if not cpu and nproc > gpu_count():
        raise ValueError(f"run needs {nproc} GPUs (tp*pp*dp), {gpu_count()} visible")
    if cfg.output.metrics_path is None:
        cfg = cfg.replace(output={"metrics_path": str(work / "metrics.json")})
    cfg.validate(nproc)
    metrics_path = Path(cfg.output.metrics_path)
    metrics_path.unlink(missing_ok=True)
    run_path = cfg.save(work / "run.json")
    cmd = torchrun_command(run_path, nproc, free_port())
    tail: collections.deque[str] = collections.deque(maxlen=60)
    with open(work / "train.log", "w") as log_file:
        proc = subprocess.Popen(
            cmd,
            cwd=str(REPO_ROOT),
            env=launch_env(nproc, cpu),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log_file.write(line)
                tail.append(line)
                if stream is not None:
                    stream.write(line)
                    stream.flush()
            rc = proc.wait(timeout=timeout_s)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    if rc != 0 or metrics is None or metrics.get("status") != "ok":
        reason = (metrics or {}).get("error") or _last_error(tail) or f"torchrun exited with {rc}"
        raise TrainingFailed(f"run {cfg.name!r} failed: {reason[:2000]}", rc, metrics)
    return metrics


_WORKER_ERROR = re.compile(r"^(\[rank\d+\]: )?(ERROR: |\w+(Error|Exception): )")


def _last_error(lines: collections.deque[str]) -> str | None:
    """The workers' exception line (not torchrun's ChildFailedError wrapper)."""
    for line in reversed(lines):
        if _WORKER_ERROR.match(line) and "ChildFailedError" not in line:
            return line.strip()
    return None


def main(argv: list[str] | None = None) -> int:
    """``python -m training.launch run.json WORK_DIR [--dp N]``: for manual runs."""
    import argparse

    p = argparse.ArgumentParser(description="launch a phiflow training run under torchrun")
    p.add_argument("run")
    p.add_argument("work_dir")
    p.add_argument("--dp", type=int, default=1)
    a = p.parse_args(argv)
    metrics = launch(RunConfig.load(a.run), a.work_dir, dp=a.dp)
    print(json.dumps({k: v for k, v in metrics.items() if k != "steps"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
