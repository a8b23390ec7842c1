"""The course's reference U-Net for crop field boundaries, and the recipe that trains it.

Notebook 02 builds this network in plain sight and trains it on the field scenes; notebook 07 (domain
shift) calls :func:`load_or_train_field_unet` to get the same trained model, which loads the checkpoint
notebook 02 saved or trains it on the spot when it is missing.

* :class:`UNet`: encoder of double 3x3 convolutions and 2x2 max pooling, a bottleneck, a decoder of 2x2
  transpose convolutions whose outputs are concatenated with the encoder's features at the same
  resolution (the skips), and a 1x1 convolution to class logits (Ronneberger et al., 2015). It also
  stores the per-band normalisation statistics it was trained with (buffers ``norm_mean``, ``norm_std``,
  in stored units), so a checkpoint carries them.
* :func:`fit_segmentation`: random crops and dihedral flips, AdamW with a cosine or plateau schedule, the course's
  :func:`course_utils.train.fit` loop; works for any model that maps ``[B, C, H, W]`` to logits.
* :func:`predict_masks` and :func:`field_scores`: predicted masks of a dataset, per-class IoU/F1 and
  field-extent IoU (interior + edge against non-field); :func:`chip_confusions` and :func:`fields_found`:
  per-chip confusion matrices and found fields, the test units of a claim, with the pooled metrics
  :func:`edge_f1`, :func:`class_miou`, :func:`extent_iou` and :func:`share_found`; :func:`release_memory`.
* :func:`load_or_train_field_unet`: the checkpoint ``field_unet_<region>_<mode>_seed<seed>-<key>.pt`` under
  :func:`course_utils.config.checkpoint_dir`, trained with the recipe of :data:`FIELD_UNET_RECIPE`
  (``field_unet_<dataset>_...`` for a real dataset such as ``ftw-austria``); ``<key>`` changes with every
  setting of :func:`field_unet_recipe`, so a learner who changes one gets a model trained with it.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2 as T
from scipy import ndimage
from torch import nn

from course_utils.config import checkpoint_dir, get_device, get_mode, seed_everything
from course_utils.data.fields import BANDS, FieldChipDataset
from course_utils.data.real_fields import field_chip_dataset
from course_utils.files import atomic_path
from course_utils.geo import check_chip_size, read_raster
from course_utils.losses import class_weights, make_loss
from course_utils.metrics import confusion_matrix, f1_per_class, iou_per_class
from course_utils.train import History, autocast, fit, keyed_path, load_or_train
from course_utils.transforms import RandomCrop, RandomFlipRotate

CLASS_NAMES = ("non-field", "interior", "edge")

#: How the reference field U-Net is trained in each mode (notebook 02's parameters cell uses the same values).
#: ``schedule``: ``"cosine"`` (the learning rate decays to ``lr / 20`` over ``epochs - hold`` epochs, then stays
#: there for the last ``hold`` epochs) or ``"plateau"`` (multiplied by 0.3 after two epochs without a better
#: validation mIoU); ``patience``: stop after that many epochs without a better one (``None``: run every epoch);
#: ``min_delta``: the smallest gain in validation mIoU that counts as better (for ``patience`` and ``converged``).
#: In ``lite`` and ``full`` the low-rate ``hold`` epochs show whether the model had stopped improving
#: (:attr:`course_utils.train.History.converged`).
FIELD_UNET_RECIPE: dict[str, dict[str, Any]] = {
    "smoke": {"width": 8, "epochs": 1, "crop": 64, "batch_size": 4, "samples_per_epoch": 12, "lr": 3e-3,
              "schedule": "cosine", "hold": 0, "patience": None, "min_delta": 0.01},
    "lite": {"width": 16, "epochs": 16, "crop": 128, "batch_size": 8, "samples_per_epoch": 64, "lr": 3e-3,
             "schedule": "cosine", "hold": 4, "patience": None, "min_delta": 0.01},
    "full": {"width": 32, "epochs": 45, "crop": 128, "batch_size": 16, "samples_per_epoch": 768, "lr": 2e-3,
             "schedule": "cosine", "hold": 5, "patience": 5, "min_delta": 0.01},
}  # fmt: skip


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 convolutions (padding 1: same size), each followed by batch norm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A U-Net with ``depth`` poolings: channels ``width, 2 width, ..., 2**depth width`` (the last in the bottleneck).

    Args:
        in_channels: input bands (4: blue, green, red, NIR).
        classes: output classes (3: non-field, interior, edge).
        width: channels of the first level; each level below doubles them.
        depth: number of 2x downsamplings; input sides must be multiples of ``2**depth`` (:attr:`stride`).

    ``width=16, depth=3`` has about 0.47 M parameters.
    """

    def __init__(self, in_channels: int = 4, classes: int = 3, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"depth and width must be >= 1, got depth={depth}, width={width}")
        channels = [width * 2**level for level in range(depth + 1)]
        self.in_channels, self.depth = in_channels, depth  # predict_raster reads the input width from in_channels
        self.encoder = nn.ModuleList(
            conv_block(in_channels if level == 0 else channels[level - 1], channels[level]) for level in range(depth)
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = conv_block(channels[depth - 1], channels[depth])
        self.up = nn.ModuleList(nn.ConvTranspose2d(channels[lv + 1], channels[lv], 2, stride=2) for lv in range(depth))
        self.decoder = nn.ModuleList(conv_block(2 * channels[level], channels[level]) for level in range(depth))
        self.head = nn.Conv2d(channels[0], classes, 1)
        self.register_buffer("norm_mean", torch.zeros(in_channels))
        self.register_buffer("norm_std", torch.ones(in_channels))

    @property
    def stride(self) -> int:
        """The total downsampling factor: input sides must be multiples of it."""
        return 2**self.depth

    @property
    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-band ``(mean, std)`` in stored units that the inputs were normalised with in training."""
        return self.norm_mean.cpu().numpy().copy(), self.norm_std.cpu().numpy().copy()

    def set_stats(self, stats: tuple[np.ndarray, np.ndarray]) -> None:
        """Record the normalisation statistics (saved with the weights)."""
        mean, std = (torch.as_tensor(np.asarray(s, dtype=np.float32).reshape(-1)) for s in stats)
        if mean.shape != self.norm_mean.shape or std.shape != self.norm_std.shape:
            raise ValueError(f"stats need {len(self.norm_mean)} values each, got {len(mean)} and {len(std)}")
        self.norm_mean.copy_(mean)
        self.norm_std.copy_(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_chip_size(x.shape[-2], x.shape[-1], self.stride)
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)  # kept for the decoder: full detail at this resolution
            x = self.pool(x)
        x = self.bottleneck(x)
        for level in reversed(range(self.depth)):
            x = self.up[level](x)
            x = self.decoder[level](torch.cat([x, skips[level]], dim=1))
        return self.head(x)


def release_memory() -> None:
    """Collect garbage and hand freed heap memory back to the system (``malloc_trim`` of glibc on Linux).

    After a training the C allocator keeps the freed activations for reuse; on a machine with little memory
    (Binder: 2 GB) handing them back keeps the next step's peak low. Elsewhere only the garbage collection runs.
    """
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # another C library (e.g. musl): nothing to trim
            pass


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def field_datasets(
    region: str = "smallholder",
    mode: str | None = None,
    data_seed: int = 0,
    crop: int | None = None,
    dataset: str = "generated",
) -> tuple[FieldChipDataset, FieldChipDataset, FieldChipDataset]:
    """Train (random crops and dihedral flips when ``crop`` is given), val and test chips of one region.

    All three are normalised with the training split's statistics. ``dataset`` is ``"generated"`` or a real
    dataset of :func:`course_utils.data.real_fields.field_chip_dataset` (``"ftw-<country>"``), whose region is
    its country (``region`` is then ignored).
    """
    augment = T.Compose([RandomCrop(crop), RandomFlipRotate()]) if crop else RandomFlipRotate()
    train = field_chip_dataset("train", dataset, region, mode, data_seed, transform=augment)
    val = field_chip_dataset("val", dataset, region, mode, data_seed, stats=train.stats)
    test = field_chip_dataset("test", dataset, region, mode, data_seed, stats=train.stats)
    return train, val, test


def segmentation_scheduler(optimizer: torch.optim.Optimizer, schedule: str, epochs: int, hold: int = 0) -> Any:
    """The learning-rate schedule of :func:`fit_segmentation` (and of ``python -m course_utils.train_fields``).

    ``"cosine"``: from the optimizer's rate down to a twentieth over ``epochs - hold`` epochs, held there for the
    last ``hold``; ``"plateau"``: times 0.3 after two epochs in a row without a better validation mIoU.
    """
    if schedule not in ("cosine", "plateau"):
        raise ValueError(f"schedule must be 'cosine' or 'plateau', got {schedule!r}")
    if not 0 <= hold < epochs:
        raise ValueError(f"hold must be at least 0 and less than epochs ({epochs}), got {hold}")
    if schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.3, patience=1)
    decay = epochs - hold
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(epoch, decay) / decay))
    )


def fit_segmentation(
    model: nn.Module,
    train_set: torch.utils.data.Dataset,
    val_set: torch.utils.data.Dataset,
    *,
    loss_fn: nn.Module,
    epochs: int,
    batch_size: int,
    lr: float,
    device: torch.device,
    samples_per_epoch: int | None = None,
    num_workers: int = 0,
    weight_decay: float = 1e-4,
    num_classes: int = 3,
    progress: bool = True,
    schedule: str = "cosine",
    patience: int | None = None,
    hold: int = 0,
    min_delta: float = 0.0,
    ignore_index: int | None = None,
) -> History:
    """Train a segmentation model with AdamW; keep the weights of the best validation mIoU.

    Each epoch draws ``samples_per_epoch`` training samples with replacement (random crops of the chips,
    so an epoch can see each chip several times, each time another window and orientation).
    ``schedule``: ``"cosine"`` decays the learning rate to ``lr / 20`` over ``epochs - hold`` epochs and keeps it
    there for the last ``hold``; ``"plateau"`` multiplies it by 0.3 after two epochs in a row without a better
    validation mIoU. ``patience``: stop after that many epochs without a better one (``None``: run all ``epochs``);
    ``min_delta``: the smallest gain in validation mIoU that counts as better (:func:`course_utils.train.fit`).
    ``ignore_index``: a mask value left out of the validation scores (give ``loss_fn`` the same).
    """
    release_memory()  # hand back what earlier work freed, before training's activations take their share
    draws = samples_per_epoch or len(train_set)
    sampler = torch.utils.data.RandomSampler(train_set, replacement=True, num_samples=draws)
    common = {"num_workers": num_workers, "pin_memory": device.type == "cuda", "persistent_workers": num_workers > 0}
    train_loader = torch.utils.data.DataLoader(train_set, batch_size, sampler=sampler, drop_last=True, **common)
    val_loader = torch.utils.data.DataLoader(val_set, min(batch_size, 2), **common)  # whole chips: small batches
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = segmentation_scheduler(optimizer, schedule, epochs, hold)
    history = fit(
        model, train_loader, val_loader, loss_fn=loss_fn.to(device), optimizer=optimizer, epochs=epochs,
        device=device, num_classes=num_classes, monitor="val_miou", scheduler=scheduler, patience=patience,
        min_delta=min_delta, amp=device.type == "cuda", progress=progress, ignore_index=ignore_index,
    )  # fmt: skip
    del optimizer, scheduler, train_loader, val_loader
    release_memory()  # the activations of training are garbage now
    return history


@torch.no_grad()
def predict_masks(
    model: nn.Module, dataset: torch.utils.data.Dataset, device: torch.device | None = None, batch_size: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted (argmax) and true masks ``[N, H, W]`` of every sample of a dataset, in eval mode.

    Small batches of whole chips and :func:`release_memory` afterwards keep the peak memory low (Binder: 2 GB).
    """
    device = device or get_device()
    was_training = model.training
    model.to(device).eval()
    predicted, truth = [], []
    for batch in torch.utils.data.DataLoader(dataset, batch_size):
        with autocast(device, scaled=True):
            logits = model(batch["image"].to(device))
        predicted.append(logits.argmax(1).cpu().numpy().astype(np.uint8))
        truth.append(batch["mask"].numpy().astype(np.uint8))
    model.train(was_training)
    release_memory()
    return np.concatenate(predicted), np.concatenate(truth)


def field_scores(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Per-class IoU and F1 of a 3-class field mask, and field-extent IoU (classes 1 and 2 against 0).

    Keys: ``iou_<class>``, ``f1_<class>`` for non-field, interior, edge (``non-field`` written ``nonfield``),
    ``miou`` (mean over the three classes) and ``extent_iou``.
    """
    cm = confusion_matrix(predicted, truth, len(CLASS_NAMES))
    scores = {}
    for name, iou, f1 in zip(CLASS_NAMES, iou_per_class(cm), f1_per_class(cm), strict=True):
        key = name.replace("-", "")
        scores[f"iou_{key}"], scores[f"f1_{key}"] = float(iou), float(f1)
    scores["miou"] = float(np.nanmean(iou_per_class(cm)))
    scores["extent_iou"] = float(iou_per_class(_extent_confusion(cm))[1])
    return scores


def chip_confusions(predicted: np.ndarray, truth: np.ndarray, classes: int = len(CLASS_NAMES)) -> np.ndarray:
    """Per-chip confusion matrices ``[N, classes, classes]`` (rows true, columns predicted) of masks ``[N, H, W]``.

    The test units of a paired bootstrap (:func:`course_utils.report.compare`): a pooled metric of any set of
    chips is the metric of their summed matrices, e.g. :func:`edge_f1` ``(cms.sum(0))``.
    """
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    return np.stack([confusion_matrix(p, t, classes) for p, t in zip(predicted, truth, strict=True)])


def edge_f1(cm: np.ndarray) -> float:
    """F1 of the edge class from a 3-class confusion matrix."""
    return float(np.nan_to_num(f1_per_class(cm)[2]))


def class_miou(cm: np.ndarray) -> float:
    """Mean IoU over the three classes (a class never predicted nor present counts as 0)."""
    return float(np.nan_to_num(iou_per_class(cm)).mean())


def _extent_confusion(cm: np.ndarray) -> np.ndarray:
    """The 2-class (non-field, field) confusion matrix of a 3-class one: interior and edge merged."""
    return np.array([[cm[0, 0], cm[0, 1:].sum()], [cm[1:, 0].sum(), cm[1:, 1:].sum()]])


def extent_iou(cm: np.ndarray) -> float:
    """Field-extent IoU (interior and edge together against non-field) from a 3-class confusion matrix."""
    return float(np.nan_to_num(iou_per_class(_extent_confusion(cm))[1]))


def fields_found(predicted: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Per chip ``[N, 2]``: true fields found (matched by one predicted field with IoU >= ``threshold``, the rule of
    :func:`course_utils.metrics.match_fields`), true fields.

    A field is a connected region of *interior* pixels (edges keep touching fields apart), in the truth and in
    the prediction alike (4-connected). A field merged with its neighbour, or split in two, is not found.
    """
    counts = []
    for p, t in zip(np.asarray(predicted), np.asarray(truth), strict=True):
        true_ids, n_true = ndimage.label(t == 1)
        found_ids, n_found = ndimage.label(p == 1)
        if n_true == 0:
            counts.append((0, 0))
            continue
        pairs = np.bincount(true_ids.ravel() * (n_found + 1) + found_ids.ravel(),
                            minlength=(n_true + 1) * (n_found + 1)).reshape(n_true + 1, n_found + 1)  # fmt: skip
        true_area, found_area = pairs.sum(1, keepdims=True), pairs.sum(0, keepdims=True)
        iou = pairs / np.maximum(true_area + found_area - pairs, 1)
        counts.append((int((iou[1:, 1:] >= threshold).any(1).sum()), n_true))
    return np.array(counts, dtype=np.int64)


def share_found(counts: np.ndarray) -> float:
    """Share of true fields found, pooled over chips, from :func:`fields_found` counts ``[N, 2]``."""
    return float(counts[:, 0].sum() / max(counts[:, 1].sum(), 1))


def field_unet_recipe(
    region: str, mode: str, seed: int = 0, loss: str = "ce_dice", *, dataset: str = "generated", data_seed: int = 0,
    **overrides: Any,
) -> dict[str, Any]:  # fmt: skip
    """Every setting that changes the field U-Net's weights: :data:`FIELD_UNET_RECIPE` of the mode with
    ``overrides``, the data (dataset, region, mode, data seed), the loss and the training seed.

    Raises:
        TypeError: for an override that is not a recipe key.
    """
    unknown = set(overrides) - set(FIELD_UNET_RECIPE[mode])
    if unknown:
        raise TypeError(f"unknown recipe keys {sorted(unknown)}; known: {sorted(FIELD_UNET_RECIPE[mode])}")
    data = region if dataset == "generated" else dataset
    return FIELD_UNET_RECIPE[mode] | overrides | {
        "data": data, "mode": mode, "data_seed": data_seed, "loss": loss, "seed": seed
    }  # fmt: skip


def _field_unet_base(recipe: dict[str, Any]) -> Path:
    loss = "" if recipe["loss"] == "ce_dice" else f"_{recipe['loss']}"
    return checkpoint_dir() / f"field_unet_{recipe['data']}_{recipe['mode']}_seed{recipe['seed']}{loss}.pt"


def field_unet_path(
    region: str, mode: str, seed: int = 0, loss: str = "ce_dice", *, dataset: str = "generated", data_seed: int = 0,
    **overrides: Any,
) -> Path:  # fmt: skip
    """Checkpoint file of the field U-Net trained with these settings (:func:`field_unet_recipe`):
    ``field_unet_<region or dataset>_<mode>_seed<seed>[_<loss>]-<recipe key>.pt``: a changed setting is another file.
    """
    recipe = field_unet_recipe(region, mode, seed, loss, dataset=dataset, data_seed=data_seed, **overrides)
    return keyed_path(_field_unet_base(recipe), recipe)


def _history_path(path: Path) -> Path:
    return path.with_suffix(".history.json")


def _read_history(path: Path) -> History | None:
    file = _history_path(path)
    if not file.is_file():
        return None
    return History(**json.loads(file.read_text()))


def _write_history(history: History, path: Path) -> None:
    with atomic_path(_history_path(path)) as tmp:
        tmp.write_text(json.dumps(asdict(history), indent=1))


def load_or_train_field_unet(
    region: str = "smallholder",
    mode: str | None = None,
    seed: int = 0,
    *,
    loss: str = "ce_dice",
    data_seed: int = 0,
    device: torch.device | None = None,
    num_workers: int = 0,
    progress: bool = True,
    dataset: str = "generated",
    **recipe: Any,
) -> tuple[UNet, History | None]:
    """The trained field U-Net of a region: loaded from its checkpoint, or trained now and saved.

    Args:
        region: the region it is trained on (``smallholder`` or ``commercial``).
        mode: data size and recipe; ``None`` reads ``COURSE_MODE``.
        seed: training seed (weights initialisation, crops, batches); part of the file name.
        loss: a :func:`course_utils.losses.make_loss` recipe; part of the file name unless ``ce_dice``.
        data_seed: the field data set's seed.
        device: where to train; default :func:`course_utils.config.get_device`.
        num_workers: DataLoader worker processes.
        progress: show a progress bar while training.
        dataset: ``"generated"`` or a real dataset of :func:`field_datasets` (``"ftw-<country>"``, whose region
            is its country: ``region`` is then ignored); a real one is part of the file name.
        recipe: overrides of :data:`FIELD_UNET_RECIPE` (``width``, ``epochs``, ``crop``, ``batch_size``,
            ``samples_per_epoch``, ``lr``, ``schedule``, ``hold``, ``patience``, ``min_delta``). The checkpoint is
            keyed by all of these settings (:func:`field_unet_path`): a checkpoint trained otherwise is never
            loaded in its place.

    Returns:
        ``(model, history)``: the model on the CPU in eval mode, with ``model.stats`` the normalisation
        statistics to apply to its inputs; the training history (``None`` if it was not recorded).
        Normalise inputs with ``model.stats`` (e.g. ``FieldChipDataset(..., stats=model.stats)``).
    """
    mode = mode or get_mode()
    settings = field_unet_recipe(region, mode, seed, loss, dataset=dataset, data_seed=data_seed, **recipe)
    path = keyed_path(_field_unet_base(settings), settings)
    model = UNet(in_channels=len(BANDS), classes=len(CLASS_NAMES), width=settings["width"])
    history: list[History] = []

    def train(net: nn.Module) -> None:
        seed_everything(seed)
        train_set, val_set, _ = field_datasets(region, mode, data_seed, settings["crop"], dataset=dataset)
        masks = np.stack([read_raster(train_set.folder / label)[0][0] for label in train_set.catalog["label"]])
        net.set_stats(train_set.stats)
        run_device = device or get_device()
        history.append(
            fit_segmentation(
                net,
                train_set,
                val_set,
                loss_fn=make_loss(loss, class_weights(masks, len(CLASS_NAMES))),
                epochs=settings["epochs"],
                batch_size=settings["batch_size"],
                lr=settings["lr"],
                device=run_device,
                samples_per_epoch=settings["samples_per_epoch"],
                num_workers=num_workers,
                progress=progress,
                schedule=settings["schedule"],
                patience=settings["patience"],
                hold=settings["hold"],
                min_delta=settings["min_delta"],
            )  # fmt: skip
        )
        net.cpu()

    loaded = load_or_train(model, _field_unet_base(settings), train, settings)
    if not loaded:
        _write_history(history[0], path)
    return model.eval(), (history[0] if history else _read_history(path))
