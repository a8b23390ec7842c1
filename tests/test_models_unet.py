"""The reference field U-Net: architecture, stored statistics, scores, learning, load-or-train."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from course_utils.models.unet import (
    FIELD_UNET_RECIPE,
    UNet,
    chip_confusions,
    class_miou,
    count_parameters,
    edge_f1,
    extent_iou,
    field_scores,
    field_unet_path,
    fields_found,
    fit_segmentation,
    load_or_train_field_unet,
    share_found,
)


def test_unet_size_and_shapes() -> None:
    model = UNet(width=16)
    assert count_parameters(model) == 482_915  # 16-32-64 encoder, 128 bottleneck, mirrored decoder
    assert model.stride == 8
    assert model(torch.zeros(2, 4, 64, 96)).shape == (2, 3, 64, 96)
    deeper = UNet(in_channels=12, classes=10, width=8, depth=4)
    assert deeper.stride == 16 and deeper(torch.zeros(1, 12, 32, 32)).shape == (1, 10, 32, 32)


def test_unet_rejects_sizes_that_are_not_multiples_of_its_stride() -> None:
    with pytest.raises(ValueError, match="multiple of the model's stride 8"):
        UNet(width=4)(torch.zeros(1, 4, 60, 64))
    with pytest.raises(ValueError, match="depth and width"):
        UNet(depth=0)


def test_a_pixel_changes_the_output_only_within_the_receptive_field() -> None:
    torch.manual_seed(0)
    model = UNet(width=4).eval()
    x = torch.zeros(1, 4, 128, 128)
    y = x.clone()
    y[0, :, 5, 7] = 5.0
    with torch.no_grad():
        difference = (model(y) - model(x)).abs().sum(1)[0]
    assert difference[5, 7] > 0  # the skip connections carry the pixel to the output at full resolution
    assert difference[:60, :60].count_nonzero() > 100  # spread by the convolutions around it
    assert difference[80:, :].count_nonzero() == 0 and difference[:, 80:].count_nonzero() == 0  # far away: untouched


def test_stats_are_stored_in_the_state_dict() -> None:
    model = UNet(width=4)
    mean, std = np.array([1.0, 2.0, 3.0, 4.0]), np.array([5.0, 6.0, 7.0, 8.0])
    model.set_stats((mean, std))
    copy = UNet(width=4)
    copy.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(copy.stats[0], mean)
    np.testing.assert_array_equal(copy.stats[1], std)
    with pytest.raises(ValueError, match="4 values"):
        model.set_stats((mean[:3], std[:3]))


def test_field_scores_known_values() -> None:
    truth = np.array([[0, 0, 1, 1], [0, 2, 2, 1]])
    predicted = np.array([[0, 1, 1, 1], [0, 2, 1, 1]])
    scores = field_scores(predicted, truth)
    assert scores["iou_nonfield"] == pytest.approx(2 / 3)  # 2 hits, 1 missed
    assert scores["iou_interior"] == pytest.approx(3 / 5)  # 3 hits; 2 false positives
    assert scores["iou_edge"] == pytest.approx(1 / 2)
    assert scores["f1_edge"] == pytest.approx(2 / 3)
    assert scores["extent_iou"] == pytest.approx(5 / 6)  # field = classes 1 and 2
    assert scores["miou"] == pytest.approx(np.mean([2 / 3, 3 / 5, 1 / 2]))


def test_pooled_scores_from_per_chip_confusions_match_field_scores() -> None:
    rng = np.random.default_rng(0)
    truth, predicted = rng.integers(0, 3, (3, 8, 8)), rng.integers(0, 3, (3, 8, 8))
    cms = chip_confusions(predicted, truth)
    assert cms.shape == (3, 3, 3) and cms.sum() == truth.size
    scores = field_scores(predicted, truth)
    assert edge_f1(cms.sum(0)) == pytest.approx(scores["f1_edge"])
    assert class_miou(cms.sum(0)) == pytest.approx(scores["miou"])
    assert extent_iou(cms.sum(0)) == pytest.approx(scores["extent_iou"])
    everything_field = chip_confusions(np.ones_like(truth), truth).sum(0)
    assert edge_f1(everything_field) == 0 and extent_iou(everything_field) == pytest.approx((truth > 0).mean())


def test_fields_found_counts_matched_interiors_and_not_merged_ones() -> None:
    truth = np.zeros((1, 6, 9), dtype=np.uint8)
    truth[0, 1:5, 1:4], truth[0, 1:5, 5:8] = 1, 1  # two fields, kept apart by an edge column
    truth[0, :, 4] = 2
    merged = np.where(truth > 0, 1, 0)  # the edge missed: one field where two are
    shifted = truth.copy()
    shifted[0, 1:5, 1:3] = 2  # the left field lost two of its three columns: IoU 4 / 12, not above 0.5
    assert fields_found(truth, truth).tolist() == [[2, 2]]
    assert fields_found(merged, truth).tolist() == [[0, 2]]
    assert fields_found(shifted, truth).tolist() == [[1, 2]]
    half = truth.copy()
    half[0, 1:3, 5:8] = 2  # the right field keeps half its rows: IoU exactly 0.5 counts, as in match_fields
    assert fields_found(half, truth).tolist() == [[2, 2]]
    assert share_found(np.array([[1, 2], [3, 4]])) == pytest.approx(4 / 6)


def test_plateau_schedule_with_patience_stops_when_it_stops_improving() -> None:
    torch.manual_seed(0)
    images, masks = torch.randn(4, 4, 16, 16), torch.zeros(4, 16, 16, dtype=torch.long)
    data = [{"image": image, "mask": mask} for image, mask in zip(images, masks, strict=True)]
    model = UNet(width=4)
    history = fit_segmentation(
        model, data, data, loss_fn=nn.CrossEntropyLoss(), epochs=30, batch_size=2, lr=1e-2,
        device=torch.device("cpu"), progress=False, schedule="plateau", patience=2,
    )  # fmt: skip
    assert history.stopped_early and history.converged and len(history.records) < 30  # all background: mIoU flat
    held = fit_segmentation(
        UNet(width=4), data, data, loss_fn=nn.CrossEntropyLoss(), epochs=5, batch_size=2, lr=1e-2,
        device=torch.device("cpu"), progress=False, hold=2,
    )  # fmt: skip
    cosine = [1e-2, 1e-2 * (0.05 + 0.95 * 0.75), 1e-2 * (0.05 + 0.95 * 0.25)]
    assert held.column("lr") == pytest.approx([*cosine, 5e-4, 5e-4])
    with pytest.raises(ValueError, match="schedule"):
        fit_segmentation(model, data, data, loss_fn=nn.CrossEntropyLoss(), epochs=1, batch_size=2, lr=1e-2,
                         device=torch.device("cpu"), schedule="step")  # fmt: skip


def test_unet_learns_a_boundary_task() -> None:
    """Thirty steps on a toy task (edges of bright squares) beat the all-background guess clearly."""
    torch.manual_seed(0)
    images = torch.zeros(8, 4, 32, 32)
    masks = torch.zeros(8, 32, 32, dtype=torch.long)
    for i in range(8):
        top, left = torch.randint(2, 14, (2,)).tolist()
        images[i, :, top : top + 14, left : left + 14] = 1.0
        masks[i, top : top + 14, left : left + 14] = 2
        masks[i, top + 1 : top + 13, left + 1 : left + 13] = 1
    images += 0.1 * torch.randn_like(images)
    model = UNet(width=8)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(images), masks)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        predicted = model.eval()(images).argmax(1)
    scores = field_scores(predicted.numpy(), masks.numpy())
    assert scores["extent_iou"] > 0.85  # all background would score 0
    assert scores["f1_edge"] > 0.5


def test_load_or_train_field_unet_trains_once_then_loads(
    course_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COURSE_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    recipe = {"width": 4, "epochs": 1, "samples_per_epoch": 4, "batch_size": 2}
    model, history = load_or_train_field_unet(
        "smallholder", "smoke", seed=3, device=torch.device("cpu"), progress=False, **recipe
    )
    path = field_unet_path("smallholder", "smoke", 3, **recipe)
    assert path.parent == tmp_path / "checkpoints" and path.is_file()
    assert re.fullmatch(r"field_unet_smallholder_smoke_seed3-[0-9a-f]{10}\.pt", path.name)
    assert history is not None and len(history.records) == 1 and "val_miou" in history.records[0]
    assert not model.training and np.all(model.stats[1] > 1)  # stored units, not the defaults of 1

    again, history_again = load_or_train_field_unet("smallholder", "smoke", seed=3, **recipe)  # the same recipe
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name
    assert history_again is not None and history_again.records == history.records
    for changed in ({"epochs": 2}, {"data_seed": 1}, {"loss": "ce"}):  # each setting that changes weights: a new file
        assert field_unet_path("smallholder", "smoke", **({"seed": 3} | recipe | changed)) != path

    with pytest.raises(TypeError, match="unknown recipe keys"):
        load_or_train_field_unet("smallholder", "smoke", seed=3, epoch=2)
    assert set(FIELD_UNET_RECIPE) == {"smoke", "lite", "full"}
