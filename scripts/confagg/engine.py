"""The vLLM engine as the sampling and aggregation stages use it (training's rollouts run in
TRL's own colocated vLLM: ``confagg.colocate``).

One place decides how an engine starts (in-process on CPU), how it is torn down so that a
second one can start in the same process, how the config's ``sampling`` section becomes vLLM's
``SamplingParams``, and the one look inside the engine that the sample stage needs
(``intercept_outputs``). Imports of vLLM stay inside the functions: a dry-run and the CPU stages
never load it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager


def make_engine(model: str, seed: int, engine_kwargs: Mapping):
    """A vLLM engine; in-process on CPU (fast start, no ``__main__`` guard needed, and no second
    process on the cores), unless ``VLLM_ENABLE_V1_MULTIPROCESSING`` says otherwise. Either way
    it samples alike: the sample and aggregate stages give every request its own seed, and
    ``seed`` here only seeds what has none (README, "Reproducibility"). The preflight runs
    first: a job given GPUs on which CUDA does not work stops here, named."""
    import torch

    from confagg import preflight

    preflight.run()
    engine_kwargs = dict(engine_kwargs)
    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # A seeded request's generator is rewound when vLLM drops the token sampled after a
        # prompt only partly prefilled (split across steps), which a CPU generator cannot do
        # ("CPU Generator does not use offset"): on CPU a prompt is prefilled in one step.
        engine_kwargs.setdefault("enable_chunked_prefill", False)
    from vllm import LLM

    return LLM(model=model, seed=seed, **engine_kwargs)


def release_engine(llm) -> None:
    """Shut an engine down and tear down vLLM's process-wide state, so that another engine can
    start in this process (the caller drops its last reference to ``llm``)."""
    from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

    llm.llm_engine.engine_core.shutdown()
    cleanup_dist_env_and_memory()


def sampling_params(sampling: Mapping, **extra):
    """vLLM ``SamplingParams`` from the config's ``sampling`` section (flat logprobs: one
    array per sample instead of a dict per token); ``extra`` are further ``SamplingParams``
    fields (``output_kind``, ``detokenize``, ``min_tokens``, ...) and override the section."""
    from vllm import SamplingParams

    fields = {
        "n": sampling["n"],
        "temperature": sampling["temperature"],
        "top_p": sampling["top_p"],
        "top_k": sampling["top_k"],
        "min_p": sampling.get("min_p", 0.0),
        "max_tokens": sampling["max_tokens"],
        "logprobs": sampling["logprobs"],
        "flat_logprobs": True,
    }
    return SamplingParams(**{**fields, **extra})


def child_request_ids(request_id: str, n: int) -> list[str]:
    """The ids under which the engine core reports the ``n`` samples of a request that
    ``LLMEngine.add_request`` returned ``request_id`` for (the ``ParentRequest`` fan-out of vLLM
    0.31 and 0.32: ``"<index>_<id>"`` when ``n > 1``, the id itself when ``n == 1``)."""
    return [request_id] if n == 1 else [f"{i}_{request_id}" for i in range(n)]


@contextmanager
def intercept_outputs(llm, hook: Callable[[list], None]) -> Iterator[None]:
    """Call ``hook(outputs)`` on every step's engine-core outputs before vLLM processes them.

    ``outputs`` is the list of ``EngineCoreOutput`` of one step (``request_id``,
    ``new_token_ids``, ``new_logprobs``: numpy arrays [new tokens, k + 1], ``finish_reason``);
    the hook may take a request's ``new_logprobs`` and set it to None, and vLLM then never turns
    them into Python lists (its per-token cost, and memory held until the request ends). It
    wraps ``llm.llm_engine.engine_core.get_output``, which ``LLMEngine.step`` calls once per
    step in vLLM 0.31 and 0.32, in-process and multiprocess alike; restored on exit.
    """
    core = llm.llm_engine.engine_core
    own = "get_output" in vars(core)  # already wrapped by someone: restore that wrapper
    get_output = core.get_output

    def wrapped():
        out = get_output()
        hook(out.outputs)
        return out

    core.get_output = wrapped
    try:
        yield
    finally:
        if own:
            core.get_output = get_output
        else:
            del core.get_output  # back to the class's method
