"""Data mixture arithmetic: shares of training tokens -> blend weights, epochs, tokens per source.

Phi-4 (report, Table 5) specifies its mixture as *shares of training tokens*; how often each source
is repeated (epochs) follows from how many unique tokens it has. This module does that arithmetic,
refuses mixtures that would repeat a source more than allowed, and expands per-source weights into
the per-prefix ``(weight, prefix)`` blend that megatron's ``BlendedMegatronDatasetBuilder`` takes.

Pure Python on purpose: the mix stage, the recipe validator and the CLI use it without torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PHI4_MIDTRAIN_TOKENS",
    "PHI4_PRETRAIN_SOURCES",
    "PHI4_PRETRAIN_TOKENS",
    "Mixture",
    "MixtureError",
    "SourceAllocation",
    "SourceSpec",
    "compute_mixture",
    "midtraining_mixture",
]

SHARE_TOLERANCE = 1e-6


class MixtureError(ValueError):
    """A mixture that cannot be trained as specified; the message names the source and the reason."""


@dataclass(frozen=True)
class SourceSpec:
    """One source of the mixture.

    ``share`` is the fraction of *training* tokens drawn from this source (the shares of a mixture
    sum to 1). ``unique_tokens`` is what the tokenize stage produced for it. ``max_epochs`` caps
    repetition (``None``: no cap). ``shards`` lists the indexed-dataset prefixes of the source with
    their token counts, so the blend samples each shard in proportion to its size.
    """

    name: str
    share: float
    unique_tokens: int
    max_epochs: float | None = None
    shards: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            raise MixtureError("source name must not be empty")
        if not (math.isfinite(self.share) and 0.0 <= self.share <= 1.0):
            raise MixtureError(f"source {self.name!r}: share {self.share} is not in [0, 1]")
        if self.unique_tokens < 0:
            raise MixtureError(f"source {self.name!r}: unique_tokens {self.unique_tokens} is negative")
        if self.max_epochs is not None and not self.max_epochs > 0:
            raise MixtureError(f"source {self.name!r}: max_epochs {self.max_epochs} must be > 0")
        for prefix, tokens in self.shards:
            if tokens < 0:
                raise MixtureError(f"source {self.name!r}: shard {prefix!r} has negative tokens {tokens}")
        if self.shards and sum(t for _, t in self.shards) != self.unique_tokens:
            raise MixtureError(
                f"source {self.name!r}: shard tokens sum to {sum(t for _, t in self.shards)}, "
                f"not unique_tokens={self.unique_tokens}"
            )


@dataclass(frozen=True)
class SourceAllocation:
    """What a source contributes to a run: its weight, tokens drawn and resulting epochs."""

    name: str
    share: float
    unique_tokens: int
    tokens: int
    epochs: float
    max_epochs: float | None
    shards: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Mixture:
    """A validated mixture for a given token budget."""

    total_tokens: int
    sources: tuple[SourceAllocation, ...] = field(default_factory=tuple)

    def by_name(self, name: str) -> SourceAllocation:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(name)

    def blend(self) -> list[tuple[float, str]]:
        """Per-prefix ``(weight, prefix)`` pairs for megatron's blended dataset.

        A source's share is split over its shards by token count; megatron normalizes the weights.
        """
        out: list[tuple[float, str]] = []
        for s in self.sources:
            if s.share == 0.0:
                continue
            if not s.shards:
                raise MixtureError(f"source {s.name!r}: no shards (indexed-dataset prefixes) to blend")
            total = sum(t for _, t in s.shards)
            for prefix, tokens in s.shards:
                if tokens > 0:
                    out.append((s.share * tokens / total, prefix))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report: the mix stage writes it next to the blend."""
        return {
            "total_tokens": self.total_tokens,
            "sources": [
                {
                    "name": s.name,
                    "share": s.share,
                    "unique_tokens": s.unique_tokens,
                    "tokens": s.tokens,
                    "epochs": s.epochs,
                    "max_epochs": s.max_epochs,
                    "shards": [list(p) for p in s.shards],
                }
                for s in self.sources
            ],
        }

    def report(self) -> str:
        """A fixed-width table like the report's Table 5."""
        lines = [f"{'source':<28}{'share':>8}{'unique':>12}{'tokens':>12}{'epochs':>8}"]
        for s in self.sources:
            lines.append(
                f"{s.name:<28}{s.share:>8.1%}{_human(s.unique_tokens):>12}{_human(s.tokens):>12}{s.epochs:>8.1f}"
            )
        lines.append(f"{'total':<28}{1.0:>8.0%}{'':>12}{_human(self.total_tokens):>12}")
        return "\n".join(lines)


def _human(n: int) -> str:
    for unit, div in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def compute_mixture(sources: Sequence[SourceSpec], total_tokens: int, tolerance: float = SHARE_TOLERANCE) -> Mixture:
    """Tokens and epochs per source for ``total_tokens`` training tokens.

    Raises :class:`MixtureError` when shares do not sum to 1, names repeat, a source with a positive
    share has no unique tokens, or a source would be repeated beyond its ``max_epochs``.
    """
    if total_tokens <= 0:
        raise MixtureError(f"total_tokens must be > 0, got {total_tokens}")
    if not sources:
        raise MixtureError("a mixture needs at least one source")
    _check_unique_names(s.name for s in sources)
    total_share = math.fsum(s.share for s in sources)
    if abs(total_share - 1.0) > tolerance:
        detail = ", ".join(f"{s.name}={s.share:g}" for s in sources)
        raise MixtureError(f"source shares sum to {total_share:.6g}, not 1 ({detail})")

    allocs = []
    for s in sources:
        tokens = round(s.share * total_tokens)
        if tokens > 0 and s.unique_tokens == 0:
            raise MixtureError(f"source {s.name!r}: share {s.share:g} but no unique tokens")
        epochs = tokens / s.unique_tokens if s.unique_tokens else 0.0
        if s.max_epochs is not None and epochs > s.max_epochs * (1 + tolerance):
            raise MixtureError(
                f"source {s.name!r}: {epochs:.2f} epochs exceeds max_epochs={s.max_epochs:g} "
                f"(share {s.share:g} of {total_tokens} tokens = {tokens} tokens, "
                f"{s.unique_tokens} unique); lower its share or add unique tokens"
            )
        allocs.append(
            SourceAllocation(
                name=s.name,
                share=s.share,
                unique_tokens=s.unique_tokens,
                tokens=tokens,
                epochs=epochs,
                max_epochs=s.max_epochs,
                shards=s.shards,
            )
        )
    return Mixture(total_tokens=total_tokens, sources=tuple(allocs))


def midtraining_mixture(
    pretrain: Sequence[SourceSpec],
    long_context: Sequence[SourceSpec],
    total_tokens: int,
    long_share: float = 0.3,
) -> Mixture:
    """Phi-4 midtraining: ``long_share`` new long-context data, the rest replayed from pretraining.

    Shares inside each group are relative (each group sums to 1) and are scaled by the group's
    share, so the replay keeps the pretraining proportions (report section 3.3: 30% long / 70% recall).
    Replay sources get the ``"replay:"`` name prefix so names stay unique in the combined mixture.
    """
    if not 0.0 < long_share < 1.0:
        raise MixtureError(f"long_share must be in (0, 1), got {long_share}")
    for group, label in ((pretrain, "replay"), (long_context, "long-context")):
        total = math.fsum(s.share for s in group)
        if abs(total - 1.0) > SHARE_TOLERANCE:
            raise MixtureError(f"{label} shares sum to {total:.6g}, not 1")
    scaled = [_scaled(s, 1.0 - long_share, "replay:") for s in pretrain]
    scaled += [_scaled(s, long_share, "") for s in long_context]
    return compute_mixture(scaled, total_tokens)


def _scaled(s: SourceSpec, factor: float, prefix: str) -> SourceSpec:
    return SourceSpec(
        name=prefix + s.name,
        share=s.share * factor,
        unique_tokens=s.unique_tokens,
        max_epochs=s.max_epochs,
        shards=s.shards,
    )


def _check_unique_names(names: Iterable[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise MixtureError(f"source {n!r} appears more than once")
        seen.add(n)


# Phi-4 technical report, Table 5 (10T training tokens).
PHI4_PRETRAIN_TOKENS = 10 * 10**12
PHI4_MIDTRAIN_TOKENS = 250 * 10**9
PHI4_PRETRAIN_SOURCES: tuple[SourceSpec, ...] = (
    SourceSpec("web", 0.15, 1_300 * 10**9),
    SourceSpec("web_rewrites", 0.15, 290 * 10**9),
    SourceSpec("synthetic", 0.40, 290 * 10**9),
    SourceSpec("code", 0.20, 820 * 10**9),
    SourceSpec("acquisitions", 0.10, 580 * 10**9),
)
