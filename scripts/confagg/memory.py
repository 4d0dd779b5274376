"""Per-GPU memory of one GRPO training process (TRL GRPOTrainer + PEFT LoRA + TRL's colocated
vLLM engine), added up term by term, and the colocated engine's KV-cache room.

Pure arithmetic on the model's shape and the training settings (core: no I/O). Each term says
whether it is exact (a count of bytes the process must hold) or an estimate (what a typical
PyTorch/vLLM build allocates; within tens of percent). The start check (``confagg.config``) and
the plan (``confagg.plan``) read it; tests/test_memory.py sets it beside a measurement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

GB = 1e9


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer (Llama/Qwen3 family) as the estimate needs it."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool  # input embedding shared with the LM head

    @classmethod
    def from_hf_config(cls, cfg: Mapping) -> ModelShape:
        """From a Hugging Face ``config.json`` (``head_dim`` absent: hidden / heads)."""
        heads = cfg["num_attention_heads"]
        return cls(
            hidden=cfg["hidden_size"],
            layers=cfg["num_hidden_layers"],
            intermediate=cfg["intermediate_size"],
            heads=heads,
            kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            vocab=cfg["vocab_size"],
            tied=bool(cfg.get("tie_word_embeddings", False)),
        )

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def params(self) -> int:
        """Parameters (norms left out: under 0.1%)."""
        per_layer = sum(a * b for a, b in self.module_shapes().values())
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * per_layer + embeddings

    def lora_params(self, r: int, modules) -> int:
        shapes = self.module_shapes()
        return self.layers * sum(r * sum(shapes[m]) for m in modules if m in shapes)

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """vLLM's KV cache per token (keys and values of every layer): exact."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


# Shapes of the models this project names in its configs (their config.json), so that a plan
# or a start check needs no download; any other model is read from its folder's config.json.
KNOWN_MODELS = {
    "Qwen/Qwen3-0.6B": ModelShape(1024, 28, 3072, 16, 8, 128, 151936, True),
    "Qwen/Qwen3-1.7B": ModelShape(2048, 28, 6144, 16, 8, 128, 151936, True),
    "Qwen/Qwen3-4B": ModelShape(2560, 36, 9728, 32, 8, 128, 151936, True),
    "Qwen/Qwen3-8B": ModelShape(4096, 36, 12288, 32, 8, 128, 151936, False),
    "smollm2-135m-instruct": ModelShape(576, 30, 1536, 9, 3, 64, 49152, True),
}

# Estimates (not counts): what the CUDA context, cuBLAS workspaces and NCCL take before any
# tensor, and the share of the dynamic memory the caching allocator holds in fragments.
CUDA_CONTEXT_BYTES = 1.5 * GB
ALLOCATOR_OVERHEAD = 0.10
# Estimate: bytes a token of activations per decoder layer without checkpointing, in units of
# the dtype (flash/SDPA attention keeps no seq x seq scores): the inputs of q/k/v, o, the norms
# and residuals (~10 hidden) and of the MLP's gate, up, product and down (~4 intermediate).
ACT_HIDDEN_UNITS, ACT_INTERMEDIATE_UNITS = 10, 4
# vLLM's own activations and CUDA graphs inside its share (estimate, on GPU).
ENGINE_WORKSPACE_BYTES = 2.0 * GB
# A CPU process's libraries before any tensor: Python, torch, vLLM, transformers, TRL, PEFT
# imported (estimate; on GPU this is host memory, outside the GPU's).
CPU_RUNTIME_BYTES = 1.0 * GB


@dataclass(frozen=True)
class TrainingShape:
    """What one training process holds: the micro-batch and its lengths, the precision, the
    adapter, and the colocated engine."""

    micro_batch: int  # training.per_device_train_batch_size
    prompt_tokens: int  # aggregator.prompt.max_prompt_tokens
    completion_tokens: int  # training.max_completion_length
    dtype_bytes: int  # 2 (bf16) or 4 (float32)
    lora_r: int
    lora_modules: tuple[str, ...]
    gradient_checkpointing: bool
    engine_bytes: float  # the colocated vLLM engine's share (0: no vLLM)
    sleep_mode: bool  # the engine frees its share while the trainer computes
    # TRL >= 1.16 projects the LM head in tiles (trl.trainer.utils.add_fused_lm_head): no
    # (tokens x vocab) logits. False: the older full logits (bf16, float32 log-softmax, grad).
    fused_lm_head: bool = True
    cuda: bool = True  # a GPU process (a CUDA context); False: one CPU process


def training_terms(model: ModelShape, t: TrainingShape) -> dict[str, float]:
    """Bytes per term of one training process at its peak. Keys name the term and whether it is
    exact or an estimate."""
    tokens = t.micro_batch * (t.prompt_tokens + t.completion_tokens)
    completion = t.micro_batch * t.completion_tokens
    per_layer_token = (
        ACT_HIDDEN_UNITS * model.hidden + ACT_INTERMEDIATE_UNITS * model.intermediate
    ) * t.dtype_bytes
    if t.gradient_checkpointing:
        # each layer's input kept, one layer recomputed at a time
        activations = tokens * (model.layers * model.hidden * t.dtype_bytes + per_layer_token)
    else:
        activations = tokens * model.layers * per_layer_token
    # CPU: SDPA's math path keeps each layer's attention probabilities for the backward pass
    # (a batch x heads x seq x seq float tensor); GPU kernels (flash, memory-efficient) do not
    seq = t.prompt_tokens + t.completion_tokens
    scores = 0 if t.cuda else t.micro_batch * model.heads * seq * seq * t.dtype_bytes
    scores *= 1 if t.gradient_checkpointing else model.layers
    if t.fused_lm_head:
        # a (tokens, 4096-vocab) tile and its float32 softmax state, per chunk: small
        logits = min(completion, 4096) * min(model.vocab, 4096) * 4 * 2
    else:
        logits = completion * model.vocab * (t.dtype_bytes + 4 + 4)
    lora = model.lora_params(t.lora_r, t.lora_modules)
    weights = model.params * t.dtype_bytes
    terms = {
        "policy weights (exact)": weights,
        # PEFT keeps the adapter in float32: weights, gradients, Adam's two moments
        "LoRA + gradients + Adam (exact)": lora * 16,
        "activations (estimate)": activations,
        "logits (estimate)": logits,
        "attention scores (estimate)": scores,
        # on GPU the engine's share holds its weights and KV cache; on CPU it is the KV cache
        # alone (kv_cache_memory_bytes), beside its own copy of the weights
        "colocated vLLM share": t.engine_bytes,
    }
    if t.cuda:
        terms["CUDA context (estimate)"] = CUDA_CONTEXT_BYTES
    else:
        terms["vLLM's copy of the weights (exact)"] = weights if t.engine_bytes else 0
        terms["libraries (estimate)"] = CPU_RUNTIME_BYTES
    return terms


def peak_bytes(terms: Mapping[str, float], sleep_mode: bool) -> float:
    """The process's peak: everything at once, or with sleep mode the larger of rollout time
    (weights, adapter and engine) and update time (weights, adapter, activations, logits);
    the allocator's fragments on top of the dynamic part."""
    static = terms["policy weights (exact)"] + terms["LoRA + gradients + Adam (exact)"]
    static += terms.get("CUDA context (estimate)", 0)
    static += terms.get("vLLM's copy of the weights (exact)", 0)
    static += terms.get("libraries (estimate)", 0)
    dynamic = terms["activations (estimate)"] + terms["logits (estimate)"]
    dynamic += terms["attention scores (estimate)"]
    engine = terms["colocated vLLM share"]
    dynamic *= 1 + ALLOCATOR_OVERHEAD
    if sleep_mode:
        return static + max(engine, dynamic)
    return static + engine + dynamic


def kv_room_tokens(model: ModelShape, engine_bytes: float, dtype_bytes: int = 2) -> int:
    """Tokens the colocated engine's KV cache holds: its share less its own copy of the weights
    and its workspace (estimate)."""
    free = engine_bytes - model.params * dtype_bytes - ENGINE_WORKSPACE_BYTES
    return max(int(free // model.kv_bytes_per_token(dtype_bytes)), 0)
