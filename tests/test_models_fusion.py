"""Fusion models, multitask task weighting and MC dropout of course_utils.models.fusion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from course_utils.models.fusion import (
    FusionNet,
    MultitaskLoss,
    accuracy_coverage,
    batch_kpis,
    broadcast_scalars,
    fit_temperature,
    focal_task_weight,
    mc_dropout_predict,
    predictive_entropy,
    sample_iou,
    uncertainty_weighted_sum,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_broadcast_planes_equal_the_scalars() -> None:
    scalars = torch.tensor([[0.65, -1.0, 3.0], [2.0, 0.0, 0.5]])
    planes = broadcast_scalars(scalars, (4, 6))
    assert planes.shape == (2, 3, 4, 6)
    for b in range(2):
        for k in range(3):
            assert torch.all(planes[b, k] == scalars[b, k])
    with pytest.raises(ValueError, match="batch, values"):
        broadcast_scalars(torch.zeros(3), 4)


@pytest.mark.parametrize("fusion", ["early", "late", "middle"])
def test_fusion_net_outputs(fusion: str) -> None:
    model = FusionNet({"s2": 12, "s1": 2}, {"seg": 10, "cls": 7, "reg": 5}, fusion=fusion, scalars=3, width=4)
    out = model(torch.randn(2, 12, 16, 16), torch.randn(2, 2, 16, 16), torch.randn(2, 3))
    assert out["seg"].shape == (2, 10, 16, 16) and out["cls"].shape == (2, 7) and out["reg"].shape == (2, 5)
    torch.testing.assert_close(out["reg"].sum(1), torch.ones(2))  # cover fractions sum to one
    assert (out["reg"] >= 0).all()


def test_early_fusion_uses_the_scalars() -> None:
    model = FusionNet({"s2": 3}, {"cls": 4}, scalars=2, width=4).eval()
    x = torch.randn(1, 3, 8, 8)
    a = model(x, torch.tensor([[0.0, 0.0]]))["cls"]
    b = model(x, torch.tensor([[5.0, -5.0]]))["cls"]
    assert not torch.allclose(a, b)


def test_late_fusion_with_one_branch_zeroed_equals_that_branch_alone() -> None:
    """Late fusion joins features only before the heads: each branch's features depend on its input alone."""
    model = FusionNet({"s2": 12, "s1": 2}, {"seg": 5, "cls": 5}, fusion="late", width=4).eval()
    s2, s1 = torch.randn(2, 12, 16, 16), torch.randn(2, 2, 16, 16)
    with torch.no_grad():
        full = model(s2, s1)["seg"]
        s2_features = model.decoders[0](model.encoders[0](s2))  # the S2 branch alone
        s1_features = model.decoders[1](model.encoders[1](s1))
    head = model.heads["seg"][1]
    weight = head.weight[:, :, 0, 0]
    joined = torch.einsum("oc,bchw->bohw", weight, torch.cat([s2_features, s1_features], 1))
    torch.testing.assert_close(full, joined + head.bias[None, :, None, None])  # features joined at the head
    # zero the S1 half of the head: the output no longer depends on S1 at all
    with torch.no_grad():
        head.weight[:, 4:] = 0
        model.heads["cls"][1].weight[:, 4 * 4 :] = 0
        a, b = model(s2, s1), model(s2, torch.randn_like(s1))
    torch.testing.assert_close(a["seg"], b["seg"])
    torch.testing.assert_close(a["cls"], b["cls"])


def test_middle_fusion_mixes_modalities() -> None:
    model = FusionNet({"s2": 4, "s1": 2}, {"cls": 3}, fusion="middle", width=8).eval()
    s2 = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        a = model(s2, torch.randn(2, 2, 16, 16))["cls"]
        b = model(s2, torch.randn(2, 2, 16, 16))["cls"]
    assert not torch.allclose(a, b)


def test_fusion_net_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="two modalities"):
        FusionNet({"s2": 12}, {"seg": 3}, fusion="late")
    with pytest.raises(ValueError, match="tasks"):
        FusionNet({"s2": 12}, {"depth": 3})
    model = FusionNet({"s2": 12, "s1": 2}, {"seg": 3}, width=4)
    with pytest.raises(ValueError, match="takes 2 inputs"):
        model(torch.randn(1, 12, 8, 8))
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(1, 12, 10, 10), torch.randn(1, 2, 10, 10))


def test_uncertainty_weighting_formula_and_gradient() -> None:
    losses = torch.tensor([2.0, 0.5])
    log_var = torch.tensor([0.3, -0.2], requires_grad=True)
    total = uncertainty_weighted_sum(losses, log_var, [True, False])
    expected = 0.5 * math.exp(-0.3) * 2.0 + 0.15 + math.exp(0.2) * 0.5 - 0.1
    assert float(total.detach()) == pytest.approx(expected, rel=1e-6)
    total.backward()
    grad = [-0.5 * math.exp(-0.3) * 2.0 + 0.5, -math.exp(0.2) * 0.5 + 0.5]
    torch.testing.assert_close(log_var.grad, torch.tensor(grad))
    # the gradient vanishes at sigma^2 = L (regression) and sigma^2 = 2 L (classification)
    at_optimum = torch.tensor([math.log(2.0), math.log(1.0)], requires_grad=True)
    uncertainty_weighted_sum(losses, at_optimum, [True, False]).backward()
    torch.testing.assert_close(at_optimum.grad, torch.zeros(2))


def test_focal_task_weight() -> None:
    assert float(focal_task_weight(0.5, gamma=1.0)) == pytest.approx(0.5 * math.log(2))
    assert float(focal_task_weight(0.5, gamma=2.0)) == pytest.approx(0.25 * math.log(2))
    weights = [float(focal_task_weight(k)) for k in (0.1, 0.5, 0.9, 0.99)]
    assert weights == sorted(weights, reverse=True)  # the worse a task does, the more weight it gets
    assert weights[-1] < 0.001


def test_multitask_loss_fixed_and_kpi() -> None:
    outputs = {"cls": torch.tensor([[2.0, 0.0], [0.0, 2.0]]), "reg": torch.tensor([[0.5, 0.5], [0.9, 0.1]])}
    targets = (torch.tensor([0, 0]), torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    fixed = MultitaskLoss(("cls", "reg"), weights={"cls": 2.0, "reg": 0.5})
    total = fixed(outputs, targets)
    ce = torch.nn.functional.cross_entropy(outputs["cls"], targets[0])
    mse = torch.nn.functional.mse_loss(outputs["reg"], targets[1])  # in the target's units squared
    torch.testing.assert_close(total, 2.0 * ce + 0.5 * mse)
    kpi = MultitaskLoss(("cls", "reg"), weighting="kpi", momentum=1.0)  # the KPI is the last batch's
    kpi(outputs, targets)
    torch.testing.assert_close(kpi.kpi, torch.tensor([0.5, 0.5]))  # 1 of 2 correct; 1 of 2 within 0.05 MAE
    with torch.no_grad():  # evaluation does not move the KPIs
        kpi({"cls": outputs["cls"], "reg": targets[1]}, targets)
    torch.testing.assert_close(kpi.kpi, torch.tensor([0.5, 0.5]))
    # the focal weight acts on the loss relative to its running average: the task's units drop out
    assert kpi.current_weights()["cls"] == pytest.approx(0.5 * math.log(2) / float(ce), rel=1e-5)
    assert kpi.current_weights()["reg"] == pytest.approx(0.5 * math.log(2) / float(mse), rel=1e-5)


def test_kpi_weights_do_not_depend_on_a_tasks_units() -> None:
    """Scaling the regression target (and output) by 1000 leaves the KPI-weighted loss of the task unchanged."""
    outputs = {"cls": torch.tensor([[2.0, 0.0], [0.0, 2.0]]), "reg": torch.tensor([[0.5, 0.5], [0.9, 0.1]])}
    targets = (torch.tensor([0, 0]), torch.tensor([[0.5, 0.4], [0.5, 0.5]]))
    totals = []
    for scale in (1.0, 1000.0):
        loss = MultitaskLoss(("cls", "reg"), weighting="kpi", mae_threshold=0.05 * scale)
        totals.append(float(loss({**outputs, "reg": scale * outputs["reg"]}, (targets[0], scale * targets[1]))))
    assert totals[0] == pytest.approx(totals[1], rel=1e-5)


def test_segmentation_kpi_is_the_share_of_samples_above_an_iou() -> None:
    target = torch.zeros(2, 4, 4, dtype=torch.int64)
    target[:, :, 2:] = 1
    predicted = target.clone()
    predicted[1] = 0  # the second sample calls everything class 0
    torch.testing.assert_close(sample_iou(predicted, target, 3), torch.tensor([1.0, 0.25]))  # (0.5 + 0) / 2
    logits = torch.nn.functional.one_hot(predicted, 3).permute(0, 3, 1, 2).float()
    assert batch_kpis({"seg": logits}, {"seg": target}, iou_threshold=0.5)["seg"] == 0.5
    assert batch_kpis({"seg": logits}, {"seg": target}, iou_threshold=0.2)["seg"] == 1.0


def test_unweighted_criterion_without_gradients() -> None:
    """With references, evaluation returns mean_t L_t / reference_t, whatever the training weights."""
    outputs = {"cls": torch.tensor([[2.0, 0.0], [0.0, 2.0]]), "reg": torch.tensor([[0.5, 0.5], [0.9, 0.1]])}
    targets = (torch.tensor([0, 0]), torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    references = {"cls": math.log(2), "reg": 0.1}
    ce = float(torch.nn.functional.cross_entropy(outputs["cls"], targets[0]))
    mse = float(torch.nn.functional.mse_loss(outputs["reg"], targets[1]))
    for weighting, weights in (("fixed", {"cls": 1.0, "reg": 1.0}), ("fixed", {"cls": 5.0, "reg": 0.01}),
                               ("uncertainty", None), ("kpi", None)):  # fmt: skip
        loss = MultitaskLoss(("cls", "reg"), weighting=weighting, weights=weights, references=references)
        with torch.no_grad():
            value = float(loss(outputs, targets))
        assert value == pytest.approx((ce / math.log(2) + mse / 0.1) / 2, rel=1e-5)
        assert float(loss(outputs, targets).detach()) != pytest.approx(value)  # training uses the weighted sum
    with pytest.raises(ValueError, match="one value per task"):
        MultitaskLoss(("cls", "reg"), references={"cls": 1.0})


def test_reg_scale_multiplies_the_fractions() -> None:
    model = FusionNet({"s2": 3}, {"reg": 4}, width=4, reg_scale=163.84).eval()
    torch.testing.assert_close(model(torch.randn(2, 3, 8, 8))["reg"].sum(1), torch.full((2,), 163.84))


def test_uncertainty_loss_learns_its_weights() -> None:
    loss = MultitaskLoss(("seg", "reg"), weighting="uncertainty")
    assert loss.current_weights() == {"seg": 1.0, "reg": 0.5}
    optimizer = torch.optim.SGD(loss.parameters(), lr=0.5)
    outputs = {"seg": torch.randn(2, 3, 4, 4), "reg": torch.softmax(torch.randn(2, 3), 1)}
    targets = (torch.randint(0, 3, (2, 4, 4)), torch.softmax(torch.randn(2, 3), 1))
    for _ in range(150):
        optimizer.zero_grad()
        loss(outputs, targets).backward()
        optimizer.step()
    seg, reg = loss.last_losses["seg"], loss.last_losses["reg"]
    s = loss.log_variances.detach()
    torch.testing.assert_close(s, torch.tensor([math.log(2 * seg), math.log(reg)]), atol=1e-2, rtol=1e-2)


def test_mc_dropout_spread_only_with_dropout() -> None:
    model = FusionNet({"s2": 3}, {"seg": 4}, width=4, dropout=0.5)
    x = torch.randn(2, 3, 8, 8)
    model.train()
    model(x)  # give batch norm some running statistics
    mean, spread = mc_dropout_predict(model, (x,), samples=8, dropout=False)
    assert float(spread.max()) == 0.0
    mean, spread = mc_dropout_predict(model, (x,), samples=8)
    assert float(spread.mean()) > 1e-3
    assert not model.training and all(not m.training for m in model.modules())  # left in eval mode
    torch.testing.assert_close(mean.sum(1), torch.ones(2, 8, 8))
    no_dropout = FusionNet({"s2": 3}, {"seg": 4}, width=4, dropout=0.0)
    _, spread = mc_dropout_predict(no_dropout, (x,), samples=5)
    assert float(spread.max()) == 0.0  # nothing to sample from without dropout layers


def test_dropout_sits_in_the_backbone() -> None:
    """MC dropout varies the backbone's features, not only the head's input: the encoder's outputs change."""
    model = FusionNet({"s2": 3}, {"cls": 4}, width=4, dropout=0.5)
    model.train()
    x = torch.randn(2, 3, 8, 8)
    first, second = model.encoders[0](x), model.encoders[0](x)
    assert torch.equal(first[0], second[0])  # the full-resolution level is kept whole
    assert not torch.equal(first[2], second[2])
    model.eval()
    torch.testing.assert_close(model.encoders[0](x)[2], model.encoders[0](x)[2])


def test_fit_temperature_recovers_the_temperature_of_the_data() -> None:
    """Labels drawn from softmax(z / 2): the fitted temperature of the logits z is about 2."""
    generator = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(20000, 5, generator=generator)
    labels = torch.multinomial(torch.softmax(logits / 2.0, dim=1), 1, generator=generator)[:, 0]
    assert fit_temperature(logits, labels) == pytest.approx(2.0, rel=0.05)


def test_predictive_entropy() -> None:
    p = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    torch.testing.assert_close(predictive_entropy(p), torch.tensor([0.0, math.log(4)]))


def test_accuracy_coverage() -> None:
    correct = np.array([1, 1, 1, 0, 1, 0, 0, 0], dtype=bool)
    perfect = np.arange(8.0)  # uncertainty ranks every error last
    np.testing.assert_allclose(accuracy_coverage(correct, perfect, (0.25, 0.5, 1.0)), [1.0, 0.75, 0.5])
    reverse = -perfect
    np.testing.assert_allclose(accuracy_coverage(correct, reverse, (0.5, 1.0)), [0.25, 0.5])
    with pytest.raises(ValueError):
        accuracy_coverage(correct, perfect, (0.0,))
