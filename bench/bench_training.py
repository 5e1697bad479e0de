"""Benchmarks (not tests): what phiflow's training wrappers cost over bare megatron-core.

1. Training tokens/s of ``training.launch`` (torchrun, megatron DDP + optimizer + schedules, logging)
   vs a bare megatron-core loop in this process (GPTModel forward/backward + torch AdamW), same tiny
   model and data. Ratio > 1 means the wrapper is faster.
2. Tokenize+write throughput of ``phiflow.records.indexed_writer`` (batch encode, one write per batch) vs
   ``IndexedDatasetBuilder`` fed by a plain per-document loop.

    .venv/bin/python bench/bench_training.py [--steps 30] [--layers 4] [--hidden 128]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from phiflow.run_config import BatchConfig, DataConfig, RunConfig, RunModel, RunOptimizer


def corpus(repeat: int) -> list[str]:
    """Licence paragraphs on this machine (real prose), repeated to get a measurable volume."""
    texts: list[str] = []
    for p in sorted(Path("/usr/share/common-licenses").glob("*")):
        if p.is_file():
            texts += [t.strip() for t in p.read_text(errors="ignore").split("\n\n") if len(t.strip()) > 40]
    return texts * repeat


def bench_tokenize(work: Path, texts: list[str]) -> float:
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from phiflow.records.indexed_writer import token_dtype, tokenize_to_indexed
    from phiflow.records.tokenizer import train_bpe

    tok = train_bpe(texts[:2000], 4096, work / "tok" / "tokenizer.json")
    ids = [f"d{i}" for i in range(len(texts))]
    n_bytes = sum(len(t.encode()) for t in texts)

    t0 = time.perf_counter()
    tokenize_to_indexed(work / "fast", texts, ids, tok)
    fast = time.perf_counter() - t0

    t0 = time.perf_counter()
    raw = tok._tok  # the HF tokenizer, one document at a time
    builder = IndexedDatasetBuilder(str(work / "plain.bin"), dtype=token_dtype(tok.vocab_size))
    for text in texts:
        doc = [*raw.encode(text, add_special_tokens=False).ids, tok.eod]
        builder.add_document(torch.tensor(doc), [len(doc)])
    builder.finalize(str(work / "plain.idx"))
    plain = time.perf_counter() - t0

    assert (work / "fast.bin").read_bytes() == (work / "plain.bin").read_bytes()
    print(f"tokenize {len(texts)} docs, {n_bytes / 1e6:.1f} MB")
    print(f"  indexed_writer      {n_bytes / fast / 1e6:8.2f} MB/s")
    print(f"  plain builder loop  {n_bytes / plain / 1e6:8.2f} MB/s")
    print(f"  ratio (writer / plain): {plain / fast:.2f}x")
    return plain / fast


def make_config(prefix: str, eod: int, vocab: int, steps: int, layers: int, hidden: int) -> RunConfig:
    return RunConfig(
        name="bench",
        model=RunModel(
            num_layers=layers, hidden_size=hidden, num_attention_heads=4, vocab_size=vocab, seq_length=128
        ),
        optimizer=RunOptimizer(lr=1e-3, min_lr=1e-4, warmup_steps=2, total_steps=steps),
        batch=BatchConfig(micro_batch_size=4, global_batch_size=8),
        data=DataConfig(blend=[(1.0, prefix)], split="99,1,0", eod_token_id=eod, eval_iters=1),
    )


def bench_launch(cfg: RunConfig, work: Path) -> float:
    from training.launch import launch

    metrics = launch(cfg, work / "launch", stream=None)
    warm = metrics["steps"][3:]  # skip start-up steps
    return sum(s["tokens_per_s"] for s in warm) / len(warm)


def bench_bare(cfg: RunConfig) -> float:
    """The same model and data driven by the smallest correct megatron-core loop."""
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state

    from training import cpu_compat
    from training.data import build_datasets
    from training.launch import free_port
    from training.model import build_model

    cpu_compat.enable()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1")
    dist.init_process_group("gloo")
    parallel_state.initialize_model_parallel(1, 1)
    cpu_compat.seed_everything(cfg.seed)
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optimizer.lr, weight_decay=0.1, betas=(0.9, 0.95))
    b = cfg.batch
    train, _ = build_datasets(cfg, cfg.optimizer.total_steps * b.global_batch_size, 1)
    rates = []
    index = 0
    for step in range(cfg.optimizer.total_steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        for _ in range(b.global_batch_size // b.micro_batch_size):
            samples = [train[index + j] for j in range(b.micro_batch_size)]
            index += b.micro_batch_size
            batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
            out = model(batch["tokens"], batch["position_ids"], batch["attention_mask"], labels=batch["labels"])
            loss = (out * batch["loss_mask"]).sum() / batch["loss_mask"].sum()
            (loss / (b.global_batch_size // b.micro_batch_size)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optimizer.clip_grad)
        opt.step()
        if step >= 3:
            rates.append(b.global_batch_size * cfg.model.seq_length / (time.perf_counter() - t0))
    dist.destroy_process_group()
    cpu_compat.disable()
    return sum(rates) / len(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=20, help="corpus repetitions for the tokenize bench")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bench_tokenize(work, corpus(a.repeat))
        from phiflow.records.tokenizer import HFTokenizer
        from training import cpu_compat

        tok = HFTokenizer(work / "tok" / "tokenizer.json")
        cfg = make_config(str(work / "fast"), tok.eod, tok.vocab_size, a.steps, a.layers, a.hidden)
        wrapped = bench_launch(cfg, work)
        bare = bench_bare(cfg)
        print(
            f"train {a.layers} layers hidden {a.hidden} seq 128, global batch 8, {a.steps} steps, "
            f"{'CPU' if cpu_compat.on_cpu() else 'GPU'}"
        )
        print(f"  training.launch (torchrun) {wrapped:10.0f} tokens/s")
        print(f"  bare megatron-core loop    {bare:10.0f} tokens/s")
        print(f"  ratio (launch / bare): {wrapped / bare:.2f}x")


if __name__ == "__main__":
    main()
