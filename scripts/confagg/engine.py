"""The vLLM engine as every stage uses it: sampling, the aggregator runs and training.

One place decides how an engine starts (in-process on CPU), how it is torn down so that a
second one can start in the same process, and how the config's ``sampling`` section becomes
vLLM's ``SamplingParams``. Imports of vLLM stay inside the functions: a dry-run and the CPU
stages never load it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def make_engine(model: str, seed: int, engine_kwargs: Mapping):
    """A vLLM engine; in-process on CPU (fast start, no ``__main__`` guard needed)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM

    return LLM(model=model, seed=seed, **dict(engine_kwargs))


def release_engine(llm) -> None:
    """Shut an engine down and tear down vLLM's process-wide state, so that another engine can
    start in this process (the caller drops its last reference to ``llm``)."""
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    llm.llm_engine.engine_core.shutdown()
    cleanup_dist_env_and_memory()


def sampling_params(sampling: Mapping):
    """vLLM ``SamplingParams`` from the config's ``sampling`` section (flat logprobs: one
    array per sample instead of a dict per token)."""
    from vllm import SamplingParams

    return SamplingParams(
        n=sampling["n"],
        temperature=sampling["temperature"],
        top_p=sampling["top_p"],
        top_k=sampling["top_k"],
        min_p=sampling.get("min_p", 0.0),
        max_tokens=sampling["max_tokens"],
        logprobs=sampling["logprobs"],
        flat_logprobs=True,
    )
