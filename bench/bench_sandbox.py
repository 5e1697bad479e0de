"""What OS isolation costs per generated snippet, and what a commit under the race protocol costs.

1. The sandbox (bubblewrap namespaces, the reaping launcher, limits, audit hook) against the floor: the
   same code run by a bare `python -I -S` subprocess. Both interleaved, median of N.
2. `Lake.commit` (lease renewal, file check, flock, head read, swap, GC) against a bare manifest write
   (temporary file + `os.replace`, what a commit was before the race protocol), on a local lake.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from lake_writers import PART, write_attempt

from phiflow.manifest import MANIFEST_NAME
from phiflow.sandbox import SandboxLimits, run_python
from phiflow.storage import Lake

CODE = "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\nprint(sum(range(10**5)))\n"
N = 40


def sandbox_pair() -> tuple[float, float]:
    limits = SandboxLimits()
    bare_cmd = [os.path.realpath(sys.executable), "-I", "-S", "-c", CODE]
    sandboxed, bare = [], []
    for _ in range(N):
        t0 = time.perf_counter()
        res = run_python(CODE, limits)
        sandboxed.append(time.perf_counter() - t0)
        assert res.ok and res.stdout.strip() == "4999950000", res
        t0 = time.perf_counter()
        subprocess.run(bare_cmd, check=True, capture_output=True)
        bare.append(time.perf_counter() - t0)
    return statistics.median(sandboxed), statistics.median(bare)


def commit_pair() -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake(tmp)
        guarded, bare = [], []
        for i in range(N):
            m = write_attempt(lake, [{"doc_id": f"d{i}", "n": i}])
            t0 = time.perf_counter()
            lake.commit(m)
            guarded.append(time.perf_counter() - t0)
            target = f"{lake.partition_path('t.ds', PART)}/{MANIFEST_NAME}"
            t0 = time.perf_counter()
            tmp_path = f"{target}.tmp"
            Path(tmp_path).write_text(m.to_json())
            os.replace(tmp_path, target)
            bare.append(time.perf_counter() - t0)
        return statistics.median(guarded), statistics.median(bare)


def main() -> None:
    s, b = sandbox_pair()
    print(f"sandboxed snippet: median {s * 1000:.1f} ms vs bare python -I -S {b * 1000:.1f} ms "
          f"({s / b:.2f}x the floor, +{(s - b) * 1000:.1f} ms per run; {N} runs each, interleaved)")
    g, b = commit_pair()
    print(f"local commit: median {g * 1000:.2f} ms vs a bare manifest replace {b * 1000:.2f} ms "
          f"(+{(g - b) * 1000:.2f} ms per commit; {N} commits)")


if __name__ == "__main__":
    main()
