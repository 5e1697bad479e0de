"""Run megatron-core on CPU (gloo) for the embedded default and CI.

megatron-core assumes CUDA in a few hundred places. Each redirection below was found necessary on a
CPU-only machine (docs/training.md, "On CPU"); all of them are switched on by :func:`enable` only when
``torch.cuda.is_available()`` is False. On a GPU nothing is patched and the same training code runs.
"""

from __future__ import annotations

import contextlib
import logging
import random
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

log = logging.getLogger(__name__)

_CPU = torch.device("cpu")
_enabled = False
_mode: _CudaToCpuMode | None = None
_saved: dict[str, Any] = {}


def on_cpu() -> bool:
    """True when training runs on CPU, i.e. no CUDA device is visible."""
    return not torch.cuda.is_available()


def _is_cuda(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return False


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrite hard-coded CUDA placements to CPU.

    Why: schedules, the FP32 optimizer and grad clipping create tensors with ``device="cuda"``,
    call ``.cuda()`` or ``.to("cuda")``. ``clip_grads`` also asserts
    ``grad.type() == 'torch.cuda.FloatTensor'``, so CPU float tensors report that type here.
    """

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            t = args[0]
            if t.device.type == "cpu" and t.dtype == torch.float32:
                return "torch.cuda.FloatTensor"
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = _CPU
        if func is torch.Tensor.to:
            args = tuple(_CPU if _is_cuda(a) else a for a in args)
        return func(*args, **kwargs)


def _cpu_device(*_: Any, **__: Any) -> torch.device:
    """Stand-in for ``torch.cuda.current_device``: megatron passes it as ``device=`` to factories
    (RoPE frequencies, grad buffers), so it must name the CPU."""
    return _CPU


def _noop(*_: Any, **__: Any) -> None:
    """Stand-in for ``torch.cuda.synchronize`` and stream waits (DDP grad sync, PP p2p)."""
    return None


class _NullStream:
    """What ``torch.cuda.current_stream()`` returns on CPU: a stream whose waits do nothing."""

    def wait_stream(self, *_: Any) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def record_event(self, *_: Any) -> None:
        return None


def enable() -> bool:
    """Switch the CPU redirections on (idempotent). Returns whether they are active.

    Does nothing when a GPU is visible.
    """
    global _enabled, _mode
    if _enabled:
        return True
    if not on_cpu():
        return False
    for name, repl in (
        ("current_device", _cpu_device),
        ("synchronize", _noop),
        ("current_stream", lambda *a, **k: _NullStream()),
    ):
        _saved[name] = getattr(torch.cuda, name)
        setattr(torch.cuda, name, repl)
    _mode = _CudaToCpuMode()
    _mode.__enter__()
    # Expected here, where neither exists, and printed by every importing module on every rank; on a GPU
    # (where enable() does nothing) a missing Transformer Engine or Apex is worth the warning.
    warnings.filterwarnings("ignore", message=r"(Transformer Engine and )?Apex (is|are) not installed",
                            category=UserWarning)
    _enabled = True
    log.info("cpu_compat: CUDA calls redirected to CPU (no GPU visible)")
    return True


def disable() -> None:
    """Undo :func:`enable` (tests and the bench switch it per process region)."""
    global _enabled, _mode
    if not _enabled:
        return
    assert _mode is not None
    _mode.__exit__(None, None, None)
    _mode = None
    for name, fn in _saved.items():
        setattr(torch.cuda, name, fn)
    _saved.clear()
    _enabled = False


@contextlib.contextmanager
def cpu_compat() -> Iterator[bool]:
    """Context manager form of :func:`enable` / :func:`disable`; yields whether it is active."""
    active = enable()
    try:
        yield active
    finally:
        if active:
            disable()


def _cpu_rng_tracker_class() -> type:
    """A megatron RNG tracker that keeps its named states in the CPU generator.

    Why: megatron's ``CudaRNGStatesTracker`` stores ``torch.cuda.get_rng_state()``; on CPU the tensor-
    parallel regions (dropout inside TP layers) must still draw from a per-TP-rank stream.
    """
    from megatron.core.tensor_parallel.random import CudaRNGStatesTracker

    class CpuRNGStatesTracker(CudaRNGStatesTracker):
        def add(self, name: str, seed: int) -> None:
            self._is_initialized = True
            if seed in self.seeds_:
                raise ValueError(f"seed {seed} already exists")
            if name in self.states_:
                raise ValueError(f"rng state {name} already exists")
            self.seeds_.add(seed)
            orig = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)

        @contextlib.contextmanager
        def fork(self, name: str = "model-parallel-rng") -> Iterator[None]:
            if name not in self.states_:
                raise KeyError(f"rng state {name} is not added")
            orig = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(orig)

    return CpuRNGStatesTracker


def seed_everything(seed: int) -> None:
    """Seed python, numpy, torch and megatron's model-parallel RNG tracker.

    On GPU this is megatron's ``model_parallel_cuda_manual_seed``. On CPU it installs
    :class:`CpuRNGStatesTracker` with the same seed layout (data-parallel seed, ``seed + 2718 + tp_rank``
    for the tensor-parallel state, an expert state), since the CUDA version reads CUDA RNG state.
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import random as mrandom

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if not on_cpu():
        mrandom.model_parallel_cuda_manual_seed(seed, force_reset_rng=True)
        return
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tracker = _cpu_rng_tracker_class()()
    tracker.add(mrandom._DATA_PARALLEL_RNG_TRACKER_NAME, seed)
    tracker.add(mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME, seed + 2718 + tp_rank)
    tracker.add(mrandom._EXPERT_PARALLEL_RNG_TRACKER_NAME, seed + 1024)
    mrandom._CUDA_RNG_STATE_TRACKER = tracker
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


def get_rng_state() -> dict[str, Any]:
    """All RNG state of this rank (python, numpy, torch CPU, CUDA if any, megatron tracker)."""
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": {k: v.clone() for k, v in get_cuda_rng_tracker().get_states().items()},
    }
    if not on_cpu():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned (resume)."""
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and not on_cpu():
        torch.cuda.set_rng_state(state["cuda"])
    get_cuda_rng_tracker().set_states(dict(state["tracker"]))
