"""A tiny random Qwen3 for tests and benchmarks, built in seconds without a model hub.

A randomly initialised two-layer Qwen3 with a byte-level BPE tokenizer trained on a built-in
corpus, saved as an ordinary Hugging Face folder that transformers and vLLM load directly. It
answers nonsense, but it exercises the same code paths as a real Qwen3: the ChatML chat
template, the ``<|im_end|>`` stop token, ``<think>``/``</think>`` as single tokens. Nothing in
the workflow uses it (the demo's real model is ``confagg.models``); tests build it through the
``tiny_model`` fixture. The write is atomic (``confagg.files.atomic_dir``).

CLI::

    python -m confagg.tinymodel OUT_DIR [--seed N]
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from confagg.files import atomic_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
TINY_QWEN3_MAX_POSITIONS = 4096
TINY_QWEN3_VOCAB_TARGET = 1024

# Plain ChatML, as Qwen models use it (without Qwen3's tool-call and thinking extras).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _tiny_corpus() -> list[str]:
    """A small deterministic training corpus: English, numbers, ChatML-ish math and LaTeX."""
    english = [
        "The quick brown fox jumps over the lazy dog.",
        "Please reason step by step, and put your final answer within \\boxed{}.",
        "You are a helpful assistant. Solve the problem and explain your reasoning.",
        "Let us think about the problem carefully before we write the answer.",
        "First, we compute the sum. Then we check the result. Therefore the answer is",
        "What is the value of x if the equation holds for all real numbers?",
        "A train travels at a constant speed. How far does it go in three hours?",
        "The probability of drawing a red ball from the bag is one third.",
        "Find the smallest positive integer that satisfies both conditions.",
        "So the final answer is the number of ways to arrange the letters.",
    ]
    latex = [
        "\\frac{1}{2} + \\frac{1}{3} = \\frac{5}{6}",
        "\\sqrt{16} = 4 and \\sqrt{2} \\approx 1.414",
        "x^2 + 2x + 1 = (x + 1)^2",
        "\\boxed{\\frac{3}{4}} \\quad \\boxed{-7} \\quad \\boxed{\\sqrt{5}}",
        "\\left( a + b \\right)^{2} = a^{2} + 2ab + b^{2}",
        "\\sum_{k=1}^{n} k = \\frac{n(n+1)}{2}",
        "\\pi r^2 \\cdot h \\times 3 \\div 2 \\leq 10 \\geq 1 \\neq 0",
    ]
    math = []
    system = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    for a in range(1, 13):
        for b in (1, 2, 3, 5, 7, 11):
            math.append(
                f"{system}<|im_start|>user\nWhat is {a}+{b}?<|im_end|>\n<|im_start|>assistant\n"
                f"<think>\nWe add {a} and {b} to get {a + b}.\n</think>\n\n"
                f"The answer is \\boxed{{{a + b}}}.<|im_end|>\n"
            )
            math.append(f"{a} \\times {b} = {a * b}, so the product is \\boxed{{{a * b}}}.")
    return english * 3 + latex * 3 + math


def _train_tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A byte-level BPE tokenizer (a few hundred tokens) trained on :func:`_tiny_corpus`.

    Digits are split one by one before the byte-level step, as in Qwen and SmolLM. Training is
    deterministic: same corpus, same merges, same ids.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [ENDOFTEXT, IM_START, IM_END]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_QWEN3_VOCAB_TARGET,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_tiny_corpus(), trainer=trainer)
    # As in Qwen3: <think> and </think> are single, non-special tokens (kept when decoding with
    # skip_special_tokens=True, since the answer extraction looks for </think>).
    backend.add_tokens(
        [AddedToken("<think>", special=False), AddedToken("</think>", special=False)]
    )

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        bos_token=None,
        extra_special_tokens=[IM_START],
        chat_template=CHATML_TEMPLATE,
        model_max_length=TINY_QWEN3_MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_qwen3(out_dir: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a tiny randomly initialised Qwen3ForCausalLM with a local ChatML tokenizer.

    Two layers, hidden size 128, 4 query heads and 2 key/value heads of size 32 (vLLM's CPU
    attention needs a head size of at least 32), 4096 positions, float32 weights. Same ``seed``,
    same weights and files. Takes a second or two. Returns ``out_dir``.
    """
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    tokenizer = _train_tiny_tokenizer()
    ids = {"eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=TINY_QWEN3_MAX_POSITIONS,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        dtype=torch.float32,
    )
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    model.eval()
    model.generation_config = GenerationConfig(eos_token_id=ids["eos"], pad_token_id=ids["pad"])

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m confagg.tinymodel",
        description="Build a tiny random Qwen3 with a local tokenizer (tests, benchmarks).",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"wrote {build_tiny_qwen3(args.out_dir, seed=args.seed)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
