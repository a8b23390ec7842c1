"""How hard are the field scenes? Baselines against a small U-Net, and the U-Net's drop on the other region.

On the test split of one region, per-class IoU/F1 (0 non-field, 1 interior, 2 edge) and field-extent IoU of:

(a) an NDVI threshold chosen on the training split by 3-class mean IoU (edges: the outer pixels of the thresholded
    fields), :func:`course_utils.baselines.fit_threshold_rule`,
(b) a per-pixel random forest on the 4 bands + NDVI of training pixels sampled evenly from the chips,
    :class:`course_utils.baselines.PixelForest`,
(c) the reference U-Net of notebook 02 (course_utils.models.unet, ~0.48 M parameters) trained on CPU
    with class-weighted cross-entropy,
(d) that U-Net on the other region's test split, normalised with the training region's statistics,
(e) the same, normalised with the other region's own training statistics.

    OMP_NUM_THREADS=2 python tools/field_baselines.py --mode lite --region smallholder --epochs 25
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from course_utils.baselines import PixelForest, fit_threshold_rule
from course_utils.config import seed_everything
from course_utils.data.fields import BANDS, EDGE_PX, REGIONS, FieldChipDataset
from course_utils.geo import read_raster
from course_utils.models.unet import UNet

CLASSES = ("non-field", "interior", "edge")


def raw_chips(dataset: FieldChipDataset) -> tuple[np.ndarray, np.ndarray]:
    """Stored images ``[N, 4, H, W]`` (reflectance x 10 000) and labels ``[N, H, W]`` of a dataset's chips."""
    images = [read_raster(dataset.folder / path)[0] for path in dataset.catalog["image"]]
    labels = [read_raster(dataset.folder / path)[0][0] for path in dataset.catalog["label"]]
    return np.stack(images).astype(np.float32), np.stack(labels).astype(np.int64)


def scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Per-class IoU and F1 and field-extent IoU (interior + edge against non-field)."""
    confusion = np.bincount(truth.ravel() * 3 + predicted.ravel(), minlength=9).reshape(3, 3).astype(float)
    hits, predicted_total, true_total = np.diag(confusion), confusion.sum(0), confusion.sum(1)
    result = {}
    for k, name in enumerate(CLASSES):
        result[f"IoU {name}"] = hits[k] / max(true_total[k] + predicted_total[k] - hits[k], 1)
        result[f"F1 {name}"] = 2 * hits[k] / max(true_total[k] + predicted_total[k], 1)
    field_true, field_predicted = truth > 0, predicted > 0
    result["IoU extent"] = (field_true & field_predicted).sum() / max((field_true | field_predicted).sum(), 1)
    return result


def train_unet(train: FieldChipDataset, epochs: int, seed: int, crop: int = 128) -> UNet:
    """(c) Train on random crops with flips, class-weighted cross-entropy, Adam."""
    seed_everything(seed)
    images = torch.stack([s["image"] for s in train])
    masks = torch.stack([s["mask"] for s in train])
    counts = torch.bincount(masks.ravel(), minlength=3).float()
    loss_fn = nn.CrossEntropyLoss(weight=(counts.sum() / (3 * counts)).sqrt())
    model = UNet(in_channels=4, classes=3, width=16, depth=3)  # the reference U-Net of notebook 02
    print(f"U-Net: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, class weights {loss_fn.weight}")
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=epochs * (4 * len(train) // 8))
    size = images.shape[-1]
    started = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(4 * len(train)) % len(train)
        model.train()
        for batch in order.split(8):
            if len(batch) < 8:
                continue
            top, left = torch.randint(0, size - crop + 1, (2,)).tolist()
            x = images[batch, :, top : top + crop, left : left + crop]
            y = masks[batch, top : top + crop, left : left + crop]
            if torch.rand(()) < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            if torch.rand(()) < 0.5:
                x, y = x.transpose(-1, -2), y.transpose(-1, -2)
            loss = loss_fn(model(x), y)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f} ({time.perf_counter() - started:.0f} s)")
    return model


@torch.no_grad()
def predict(model: UNet, dataset: FieldChipDataset) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and true masks of every chip of a dataset."""
    model.eval()
    predicted, truth = [], []
    for sample in dataset:
        predicted.append(model(sample["image"][None]).argmax(1)[0].numpy())
        truth.append(sample["mask"].numpy())
    return np.stack(predicted), np.stack(truth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="lite")
    parser.add_argument("--region", default="smallholder", choices=list(REGIONS))
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    other = next(name for name in REGIONS if name != args.region)

    train = FieldChipDataset("train", args.region, args.mode, args.seed)
    test = FieldChipDataset("test", args.region, args.mode, args.seed)
    shifted = FieldChipDataset("test", other, args.mode, args.seed, stats=train.stats)
    train_raw, (test_images, test_truth) = raw_chips(train), raw_chips(test)

    red, nir = BANDS.index("red"), BANDS.index("nir")
    rule = fit_threshold_rule(*train_raw, red=red, nir=nir, edge_px=EDGE_PX, thresholds=np.linspace(-0.2, 0.9, 56))
    print(f"NDVI threshold chosen on train: {rule.threshold:.2f}")
    rows = {"(a) NDVI threshold": scores(rule.predict(test_images), test_truth)}
    forest = PixelForest(trees=100, depth=14, pixels=40_000, red=red, nir=nir, seed=args.seed, n_jobs=2)
    rows["(b) pixel random forest"] = scores(forest.fit(*train_raw).predict(test_images), test_truth)
    started = time.perf_counter()
    model = train_unet(train, args.epochs, args.seed)
    print(f"U-Net trained in {time.perf_counter() - started:.0f} s ({args.epochs} epochs)")
    rows["(c) U-Net"] = scores(*predict(model, test))
    rows[f"(d) U-Net on {other}"] = scores(*predict(model, shifted))
    own_stats = FieldChipDataset("test", other, args.mode, args.seed)
    rows[f"(e) same, {other}'s own stats"] = scores(*predict(model, own_stats))

    columns = list(next(iter(rows.values())))
    print(f"\ntest split, trained on {args.region} ({args.mode}, seed {args.seed})")
    print(f"{'method':32s}" + "".join(f"{c:>16s}" for c in columns))
    for name, values in rows.items():
        print(f"{name:32s}" + "".join(f"{values[c]:16.3f}" for c in columns))


if __name__ == "__main__":
    main()
