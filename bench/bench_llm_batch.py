"""Offline LLM throughput by batch size and weight type: the same 24 sampled requests (temperature 0.7,
64 tokens, prompts of different lengths) generated at each batch size in float32, then at the last size
in bfloat16; tokens/s printed as ratios against the first run, and how many texts equal the first run's
(each row samples from its own generator, so every batch size should give the same texts; bfloat16
rounds the logits differently, so it may not).

    .venv/bin/python bench/bench_llm_batch.py [--sizes 8,24,32]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="8,24,32")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    from phiflow.llm import ChatRequest, LLMConfig
    from spark_jobs.engine.llm_offline import OfflineHFClient, default_model_path, load_model, native_bf16

    for dtype in ("float32", "bfloat16"):
        load_model(default_model_path(), a.threads, dtype)  # loading is not generating
    texts = [f"Rewrite this passage about topic {i} in plain words: "
             + "The quick brown fox jumps over the lazy dog. " * (3 + i % 7) for i in range(24)]
    reqs = [ChatRequest(messages=[{"role": "user", "content": t}], temperature=0.7, max_tokens=64, seed=i)
            for i, t in enumerate(texts)]
    sizes = [int(s) for s in a.sizes.split(",")]
    runs = [(size, "float32") for size in sizes] + [(sizes[-1], "bfloat16")]
    print(f"native bfloat16 on this CPU: {native_bf16()}")
    rates, outputs = {}, {}
    for size, dtype in runs:
        client = OfflineHFClient(LLMConfig(batch_size=size, threads=a.threads, dtype=dtype))
        t0 = time.perf_counter()
        out = dict(client._generate(reqs))
        seconds = time.perf_counter() - t0
        tokens = sum(r.completion_tokens for r in out.values())
        run = f"batch {size:>3} {dtype}"
        rates[run], outputs[run] = tokens / seconds, [out[i].texts for i in range(len(reqs))]
        print(f"{run}: {tokens} tokens in {seconds:.1f} s = {rates[run]:.1f} tok/s", flush=True)
    first = next(iter(rates))
    for run, rate in rates.items():
        same = sum(x == y for x, y in zip(outputs[run], outputs[first], strict=True))
        print(f"{run} vs {first}: {rate / rates[first]:.2f}x tokens/s, {same}/{len(reqs)} texts equal")


if __name__ == "__main__":
    main()
