"""Uniform and RTN formats on hand-computed tensors."""

import pytest
import torch

from mmq_eval.quant.formats import (
    fake_quantize,
    group_qparams,
    rtn_quantize,
    uniform_quantize,
)


def test_uniform_paper_formula_2_bits():
    # min -1, range 2: normalised [0, .5, .75, 1] · 3 = [0, 1.5, 2.25, 3] → round (half to even)
    # [0, 2, 2, 3] → /3 · 2 − 1
    w = torch.tensor([[-1.0, 0.0, 0.5, 1.0]])
    assert torch.allclose(uniform_quantize(w, 2), torch.tensor([[-1.0, 1 / 3, 1 / 3, 1.0]]), atol=1e-6)


def test_uniform_3_bits_and_constant_tensor():
    # [0, .25, .5, 1] · 7 = [0, 1.75, 3.5, 7] → [0, 2, 4, 7] / 7
    w = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.allclose(uniform_quantize(w, 3), torch.tensor([0.0, 2 / 7, 4 / 7, 1.0]), atol=1e-6)
    c = torch.full((2, 3), 0.7)
    assert torch.equal(uniform_quantize(c, 4), c)
    assert uniform_quantize(w.half(), 3).dtype == torch.float16


def test_rtn_asymmetric_groups_hand_computed():
    # group 1: xmin −.25, xmax .5 → scale .25, zero 1; w/s = [−1, .5, 2, .5] → codes [0, 1, 3, 1]
    # group 2: xmin 0, xmax 3 → scale 1, zero 0 → exact
    w = torch.tensor([[-0.25, 0.125, 0.5, 0.125, 0.0, 1.0, 2.0, 3.0]], dtype=torch.float64)
    q = rtn_quantize(w, bits=2, group_size=4, sym=False)
    assert q.scale.tolist() == [[0.25, 1.0]] and q.zero.tolist() == [[1.0, 0.0]]
    assert q.codes.tolist() == [[0, 1, 3, 1, 0, 1, 2, 3]]
    assert q.dequantize().tolist() == [[-0.25, 0.0, 0.5, 0.0, 0.0, 1.0, 2.0, 3.0]]


def test_rtn_symmetric_per_channel_hand_computed():
    # 2 bits: xmax 1.5 → scale 2·1.5/3 = 1, zero 2; round [−1.5, −.4, .6, 1.5] = [−2, 0, 1, 2] → clamp 3
    w = torch.tensor([[-1.5, -0.4, 0.6, 1.5]], dtype=torch.float64)
    q = rtn_quantize(w, bits=2, group_size=4, sym=True)
    assert q.codes.tolist() == [[0, 2, 3, 3]]
    assert q.dequantize().tolist() == [[-2.0, 0.0, 1.0, 1.0]]
    # 3 bits: xmax 3.5 → scale 1, zero 4
    w3 = torch.tensor([[-3.5, 2.2, -0.6, 3.5]], dtype=torch.float64)
    assert fake_quantize(w3, 3, 4, sym=True).tolist() == [[-4.0, 2.0, -1.0, 3.0]]


def test_all_zero_group_stays_zero():
    w = torch.zeros(2, 8)
    assert torch.equal(fake_quantize(w, 4, 4, sym=False), w)
    scale, _ = group_qparams(w, 4, 4, sym=False)
    assert torch.all(scale > 0)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group_size,sym", [(16, False), (16, True), (64, False), (64, True)])
def test_at_most_2_pow_bits_values_per_group(bits, group_size, sym):
    torch.manual_seed(bits)
    w = torch.randn(8, 64) * torch.rand(8, 1) * 3
    q = fake_quantize(w, bits, group_size, sym)
    for g in range(64 // group_size):
        for r in range(8):
            assert q[r, g * group_size:(g + 1) * group_size].unique().numel() <= 2**bits
    if bits == 8:
        assert (q - w).abs().max() < w.abs().max() / 100


def test_uniform_at_most_2_pow_bits_values_per_tensor():
    w = torch.randn(16, 32)
    for bits in (2, 3, 5):
        assert uniform_quantize(w, bits).unique().numel() <= 2**bits
