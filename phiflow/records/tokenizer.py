"""Tokenizers for the tokenize stage: HF ``tokenizer.json``, a tiktoken BPE file, or a locally trained BPE.

Phi-4 uses tiktoken (cl100k-like, vocabulary padded to 100,352). tiktoken downloads its encodings at run
time, which the embedded default cannot do, so a production recipe points at an encoding *file*; the
offline default trains a byte-level BPE with HF ``tokenizers`` on the given texts (seconds).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

EOD_TOKEN = "<|endoftext|>"
# cl100k_base's split pattern (what tiktoken uses for GPT-4-style encodings).
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)


class Tokenizer(Protocol):
    """What the tokenize stage needs: batch encoding, the vocabulary size and the end-of-document id."""

    vocab_size: int
    eod: int
    name: str

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class HFTokenizer:
    """A HF ``tokenizers`` tokenizer; ``encode_batch`` runs in Rust threads (no GIL)."""

    def __init__(self, path: str | os.PathLike[str], eod_token: str = EOD_TOKEN) -> None:
        from tokenizers import Tokenizer as _Tok

        self._tok = _Tok.from_file(str(path))
        eod = self._tok.token_to_id(eod_token)
        if eod is None:
            raise ValueError(f"{path}: tokenizer has no end-of-document token {eod_token!r}")
        self.eod = eod
        self.vocab_size = self._tok.get_vocab_size()
        self.name = f"hf:{Path(path).name}"

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # encode_batch_fast skips character offsets (unused here): ~2x faster where available.
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids))


class TiktokenTokenizer:
    """A tiktoken encoding read from a local ``.tiktoken`` BPE file (base64 token + rank per line)."""

    def __init__(self, path: str | os.PathLike[str], pattern: str = CL100K_PATTERN) -> None:
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        ranks = load_tiktoken_bpe(str(path))
        self.eod = len(ranks)
        self._enc = tiktoken.Encoding(
            name=Path(path).stem, pat_str=pattern, mergeable_ranks=ranks, special_tokens={EOD_TOKEN: self.eod}
        )
        self.vocab_size = self._enc.n_vocab
        self.name = f"tiktoken:{Path(path).name}"

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._enc.encode_ordinary_batch(list(texts))

    def decode(self, ids: Sequence[int]) -> str:
        return self._enc.decode(list(ids))


def train_bpe(
    texts: Iterable[str], vocab_size: int, path: str | os.PathLike[str], min_frequency: int = 2
) -> HFTokenizer:
    """Train a byte-level BPE offline and save it as ``tokenizer.json``; the EOD token gets id 0."""
    from tokenizers import Tokenizer as _Tok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = _Tok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return HFTokenizer(path)


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """``*.json`` -> HF tokenizers; ``*.tiktoken`` -> tiktoken (if installed)."""
    p = Path(path)
    if p.suffix == ".json":
        return HFTokenizer(p)
    if p.suffix == ".tiktoken":
        try:
            return TiktokenTokenizer(p)
        except ImportError as e:
            raise ImportError(f"{p}: reading a tiktoken encoding needs the 'tiktoken' package") from e
    raise ValueError(f"{p}: unknown tokenizer format (expected tokenizer.json or *.tiktoken)")
