"""omni.linear: the split few-row product equals a float64 product within fp32 rounding, keeps
nn.Linear's parameters and state dict, and is taken only where it is meant to be."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from omni import linear as linear_module
from omni.linear import Linear, linear, split_blocks


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setattr(linear_module, "SPLIT_MIN_WEIGHTS", 0)  # the small test matrices split too
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _exact(x, weight, bias):
    return F.linear(x.double(), weight.double(), None if bias is None else bias.double())


@pytest.mark.parametrize("shape", [(1, 64), (4, 64), (3, 5, 64), (linear_module.SPLIT_MAX_ROWS, 64),
                                   (linear_module.SPLIT_MAX_ROWS + 1, 64)])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("layout", ["row-major", "column-major"])
def test_matches_a_float64_product(two_threads, shape, with_bias, layout):
    torch.manual_seed(0)
    weight = torch.randn(96, 64)
    if layout == "column-major":
        weight = weight.t().contiguous().t()
    bias = torch.randn(96) if with_bias else None
    x = torch.randn(*shape)
    out = linear(x, weight, bias)
    assert out.shape == (*shape[:-1], 96)
    torch.testing.assert_close(out.double(), _exact(x, weight, bias), rtol=1e-5, atol=1e-5)


def test_split_is_taken_for_few_rows_and_not_for_a_prefill(two_threads, monkeypatch):
    calls = []
    real = torch.matmul
    monkeypatch.setattr(linear_module.torch, "matmul", lambda *a: calls.append(a[1].shape) or real(*a))
    weight = torch.randn(96, 64)
    linear(torch.randn(2, 64), weight)
    assert calls == [(2, 64, 48)]  # two slices of 48 output features, one per thread
    linear(torch.randn(2, 64), weight.t().contiguous().t())
    assert calls[1] == (2, 32, 96)  # column-major: two slices of 32 input features
    linear(torch.randn(linear_module.SPLIT_MAX_ROWS + 1, 64), weight)
    linear(torch.randn(2, 32), weight[:, ::2])  # neither layout: no free view
    monkeypatch.setattr(linear_module, "SPLIT_MIN_WEIGHTS", weight.numel() + 1)
    linear(torch.randn(2, 64), weight)  # small enough to stay in the caches
    assert len(calls) == 2


def test_blocks_divide_the_output_features(two_threads):
    assert split_blocks(96) == 2
    assert split_blocks(7) == 1  # odd: one block, plain F.linear
    weight, x = torch.randn(7, 64), torch.randn(1, 64)
    torch.testing.assert_close(linear(x, weight), x @ weight.t())
    torch.set_num_threads(1)
    assert split_blocks(96) == 1


def test_module_is_an_nn_linear_with_the_same_state_dict(two_threads):
    torch.manual_seed(1)
    plain = nn.Linear(64, 96)
    ours = Linear(64, 96)
    ours.load_state_dict(plain.state_dict(), strict=True)
    assert isinstance(ours, nn.Linear) and list(ours.state_dict()) == list(plain.state_dict())
    x = torch.randn(1, 1, 64)
    torch.testing.assert_close(ours(x), plain(x), rtol=1e-5, atol=1e-6)
