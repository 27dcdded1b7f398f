"""The shapes training loop (mmq_eval.shapes.training): schedule and gradient clipping."""

import pytest
import torch

from mmq_eval.shapes.training import Budget, fit, learning_rate


def test_learning_rate_warms_up_then_decays_to_five_percent():
    assert learning_rate(0, 0.0, peak=1.0, warmup=4) == 0.25
    assert learning_rate(3, 0.0, peak=1.0, warmup=4) == 1.0
    assert learning_rate(10, 0.5, peak=1.0, warmup=4) == pytest.approx(0.05 + 0.95 * 0.5)
    assert learning_rate(10, 1.0, peak=1.0, warmup=4) == pytest.approx(0.05)


def test_every_step_clips_gradients_to_norm_one(capsys):
    weight = torch.nn.Parameter(torch.zeros(2))
    seen = []

    def step_loss(step):
        return (weight * torch.tensor([30.0, 40.0])).sum(), f"step {step}"  # gradient norm 50

    def record():
        seen.append(weight.detach().clone())

    opt = torch.optim.SGD([weight], lr=1.0)
    run = fit((p for p in [weight]), opt, step_loss, Budget(peak_lr=1.0, warmup=1, steps=3, log_every=1),
              after_step=record)
    assert run.steps == 3
    # each SGD step moves by lr x the clipped gradient (norm 1): (-0.6, -0.8) times the step's lr
    lrs = [learning_rate(s, s / 3, 1.0, 1) for s in range(3)]
    for step in range(3):
        want = -torch.tensor([0.6, 0.8]) * sum(lrs[:step + 1])
        torch.testing.assert_close(seen[step], want)
    assert "step 3" in capsys.readouterr().out
