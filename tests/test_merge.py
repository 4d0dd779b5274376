"""The trained adapter merged into its base model gives the adapted model's outputs."""

from __future__ import annotations

import pytest
import torch

from confagg.merge import merge_adapter


def test_merged_model_computes_what_base_plus_adapter_computes(tmp_path, tiny_model):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), lora)
    adapted.save_pretrained(tmp_path / "adapter")

    out = merge_adapter(str(tiny_model), str(tmp_path / "adapter"), tmp_path / "merged")
    assert out == tmp_path / "merged" and not (tmp_path / ".merged.tmp").exists()
    tokenizer = AutoTokenizer.from_pretrained(out)  # a complete model folder: tokenizer too
    ids = tokenizer("What is 12 + 30?", return_tensors="pt").input_ids
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        expected = PeftModel.from_pretrained(base, tmp_path / "adapter")(ids).logits
        merged = AutoModelForCausalLM.from_pretrained(out)(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model)(ids).logits
    assert merged.shape == expected.shape
    assert torch.allclose(merged, expected, atol=1e-4)
    assert not torch.allclose(merged, plain, atol=1e-4)  # the adapter changed something
    assert not list(out.glob("adapter_*"))  # plain weights, no LoRA left


def test_merge_leaves_no_folder_when_the_adapter_is_missing(tmp_path, tiny_model):
    with pytest.raises((OSError, ValueError)):
        merge_adapter(str(tiny_model), str(tmp_path / "nothing"), tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
