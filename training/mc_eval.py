"""Multiple-choice log-likelihood of a checkpoint: the benchmark scores of an ablation evaluation.

Each choice is scored by the summed log-probability of its tokens as the continuation of the item's
context (and per token, the length-normalized variant); an item is right when its right choice
scores highest. One process at TP=PP=1: megatron's distributed checkpoints reshard on load, so a
run trained at TP=2 is scored the same way. Items arrive tokenized (the caller owns the tokenizer).

    python -m training.mc_eval RUN_JSON CHECKPOINT_DIR ITEMS_JSON OUT_JSON
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from phiflow.run_config import RunConfig
from training.launch import REPO_ROOT, free_port, launch_env


def load_model(cfg: RunConfig, ckpt_dir: str) -> Any:
    """The GPT model of `cfg` at TP=PP=1 with the weights of the checkpoint's latest step."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    from training.model import build_model
    from training.pretrain import init_distributed, iter_dir, latest_step

    step = latest_step(ckpt_dir)
    if step is None:
        raise FileNotFoundError(f"{ckpt_dir}: no 'latest' marker, nothing to evaluate")
    cfg = cfg.replace(parallel={"tp": 1, "pp": 1})
    if not dist.is_initialized():
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"})
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    init_distributed(cfg)
    model = build_model(cfg)
    state = dist_checkpointing.load({"model": model.sharded_state_dict()}, str(iter_dir(ckpt_dir, step)))
    model.load_state_dict(state["model"])
    return model.eval()


@torch.no_grad()
def continuation_logprobs(model: Any, pairs: list[tuple[list[int], list[int]]], seq_length: int,
                          batch_size: int = 32) -> list[float]:
    """log P(choice | context) of each (context, choice), each context cut from the left to fit the
    model's sequence length. Sequences of similar length share a forward pass, right-padded to the
    longest: under the causal mask a position sees only the tokens before it, so padding after a
    sequence changes none of its log-probabilities."""
    seqs = []
    for context, choice in pairs:
        ids = (context + choice)[-seq_length:]
        if len(choice) >= len(ids):
            raise ValueError(f"a choice of {len(choice)} tokens leaves no context within seq_length {seq_length}")
        seqs.append((ids, len(choice)))
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    out = [0.0] * len(seqs)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        length = max(len(seqs[i][0]) for i in chunk)
        tokens = torch.zeros((len(chunk), length), dtype=torch.long)
        for row, i in enumerate(chunk):
            tokens[row, : len(seqs[i][0])] = torch.tensor(seqs[i][0])
        positions = torch.arange(length, dtype=torch.long)[None].expand(len(chunk), length)
        mask = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)[None, None]  # True: hidden
        logp = torch.log_softmax(model(tokens, positions, mask).float(), dim=-1)
        for row, i in enumerate(chunk):
            end, n = len(seqs[i][0]), seqs[i][1]
            out[i] = float(logp[row, end - n - 1 : end - 1].gather(1, tokens[row, end - n : end, None]).sum())
    return out


def score(model: Any, items: list[dict[str, Any]], seq_length: int, eod: int) -> dict[str, dict[str, float]]:
    """Accuracy, length-normalized accuracy, chance and mean log-prob of the right choice per benchmark.
    Every context starts with the end-of-document token, as each training document follows one."""
    pairs = [([eod, *it["context"]], c) for it in items for c in it["choices"]]
    flat = iter(continuation_logprobs(model, pairs, seq_length))
    acc: dict[str, list[tuple[bool, bool, float, float]]] = defaultdict(list)
    for it in items:
        lps = [next(flat) for _ in it["choices"]]
        norm = [lp / len(c) for lp, c in zip(lps, it["choices"], strict=True)]
        right = it["answer"]
        acc[it["benchmark"]].append((max(range(len(lps)), key=lps.__getitem__) == right,
                                     max(range(len(norm)), key=norm.__getitem__) == right,
                                     1 / len(lps), lps[right]))
    return {name: {"items": len(rows), "accuracy": sum(r[0] for r in rows) / len(rows),
                   "accuracy_norm": sum(r[1] for r in rows) / len(rows), "chance": sum(r[2] for r in rows) / len(rows),
                   "mean_logprob_right": sum(r[3] for r in rows) / len(rows)}
            for name, rows in sorted(acc.items())}


def evaluate(run_json: str, ckpt_dir: str, items_json: str, out_json: str) -> dict[str, dict[str, float]]:
    cfg = RunConfig.load(run_json)
    items = json.loads(Path(items_json).read_text())["items"]
    result = score(load_model(cfg, ckpt_dir), items, cfg.model.seq_length, cfg.data.eod_token_id)
    tmp = Path(out_json + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out_json)
    return result


def run_subprocess(run: dict[str, Any], ckpt_dir: str, items: list[dict[str, Any]], work: Path,
                   timeout_s: float = 1800) -> dict[str, dict[str, float]]:
    """Score in a fresh process (its own process group and gloo world), as the training runs are."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "run.json").write_text(json.dumps(run))
    (work / "items.json").write_text(json.dumps({"items": items}))
    out = work / "mc.json"
    cmd = [sys.executable, "-m", "training.mc_eval", str(work / "run.json"), ckpt_dir, str(work / "items.json"),
           str(out)]
    env = launch_env(1, not torch.cuda.is_available())
    done = subprocess.run(cmd, cwd=str(REPO_ROOT), env=env, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"training.mc_eval failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_json")
    p.add_argument("checkpoint_dir")
    p.add_argument("items_json")
    p.add_argument("out_json")
    a = p.parse_args(argv)
    print(json.dumps(evaluate(a.run_json, a.checkpoint_dir, a.items_json, a.out_json), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
