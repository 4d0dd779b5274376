"""The trained LoRA adapter merged into a copy of its base model (PEFT ``merge_and_unload``).

A plain model folder that any engine serves without LoRA support: the evaluation runs the
trained aggregator on it when ``evaluation.trained_model`` is ``merged`` (on CPU, vLLM's LoRA
kernels make every request several times slower), and users can ship it. Written atomically:
the folder appears only when it is complete.

    python -m confagg.merge --model BASE --adapter ADAPTER OUT
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from confagg.files import atomic_dir


def merge_adapter(model: str, adapter: str, out: str | Path) -> Path:
    """Write ``model`` with ``adapter`` merged into its weights (base dtype kept) to ``out``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(model, dtype="auto")
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(model).save_pretrained(tmp)
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="base model folder")
    ap.add_argument("--adapter", required=True, help="LoRA adapter (train/<variant>/adapter)")
    ap.add_argument("out", help="folder of the merged model")
    args = ap.parse_args(argv)
    out = merge_adapter(args.model, args.adapter, args.out)
    print(f"wrote the merged model to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
