"""Train the course's field U-Net from the command line: on the course's regions (on one process or on many with
DistributedDataParallel), or on your own scene and field polygons.

    python -m course_utils.train_fields --region smallholder --epochs 5 --batch-size 8
    torchrun --nproc_per_node=4 -m course_utils.train_fields --region smallholder --epochs 40 --batch-size 64
    python -m course_utils.train_fields --image SCENE.tif --fields FIELDS.gpkg [--bands red green blue nir]

Your own scene (:func:`train_on_scene`): the scene is split into blocks for training, validation and test with a
buffer between them (:class:`course_utils.data.scene.FieldScene`), the U-Net is trained with the course's recipe
(:data:`course_utils.models.unet.FIELD_UNET_RECIPE` of the mode) into a checkpoint keyed by the recipe, the scene,
the polygons, the bands and the split, and the test part scores it against the threshold rule and the pixel forest
(:mod:`course_utils.baselines`), by pixels (edge F1, mean IoU, extent IoU) and by fields (matched at IoU >= 0.5:
precision, recall, F1). The scene (or ``--predict OTHER.tif``) is then predicted and polygonised: the output
folder gets ``prediction.tif``, ``fields.gpkg`` and ``scores.json``, all at once or, on an error, none of them.

Data parallelism: every process holds a full copy of the model and computes on its own share of each global
batch (a :class:`~torch.utils.data.distributed.DistributedSampler` deals the shuffled samples out; per-process
batch = global batch // processes). During ``backward`` DDP averages the gradients over the processes, so each
optimizer step is the step one process would take on the whole global batch: the result does not depend on the
number of processes. Three things keep it that way:

* augmentations (random crop, flips) are drawn from ``(seed, epoch, sample index)``, not from the process's
  random state, so a sample looks the same whichever process reads it (:class:`SeededAugmentation`);
* batch norm statistics are pooled over the processes (:func:`synchronise_batch_norm`), otherwise each
  process would normalise its small share with its own mean and variance;
* losses that are ratios over the batch (class-weighted cross-entropy, Dice) are computed per process;
  ``--loss ce`` is exactly decomposable.

The loop is :func:`course_utils.train.fit`; rank 0 prints and writes the weights and history. The backend is
nccl on CUDA, gloo on the CPU. The weights go to the file notebooks 02 and 07 load
(:func:`course_utils.models.unet.field_unet_path`) unless ``--out`` names another.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import torch
import torchvision.transforms.v2 as T
from rasterio.windows import Window
from torch import nn
from torch.distributed.nn.functional import all_reduce
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from course_utils.baselines import PixelForest, choose_forest_depth, fit_threshold_rule
from course_utils.config import MODES, by_mode, checkpoint_dir, get_device, get_mode, results_dir, seed_everything
from course_utils.data.fields import BANDS, EDGE_PX, FieldChipDataset, ensure_fields
from course_utils.data.scene import IGNORE, FieldScene, SceneCrops, SceneTiles, resolve_bands
from course_utils.files import atomic_path, stop_cleanly_on_sigterm
from course_utils.geo import polygonize, predict_raster, read_raster
from course_utils.losses import LOSS_NAMES, class_weights, make_loss
from course_utils.metrics import confusion_matrix, match_fields
from course_utils.models.unet import (
    CLASS_NAMES,
    FIELD_UNET_RECIPE,
    UNet,
    class_miou,
    edge_f1,
    extent_iou,
    field_unet_path,
    field_unet_recipe,
    fit_segmentation,
    segmentation_scheduler,
)
from course_utils.train import History, fit, load_or_train, loader_options, save_weights
from course_utils.transforms import RandomCrop, RandomFlipRotate


class SeededAugmentation(Dataset):
    """``length`` random crops with flips of a dataset's samples, each drawn from ``(seed, epoch, index)``.

    Index ``i`` is sample ``i % len(dataset)``: an epoch of ``length`` draws can visit each chip several times,
    each time another window and orientation. Call :meth:`set_epoch` for new draws (:func:`fit` does).

    Args:
        dataset: samples ``{"image": [C, H, W], "mask": [H, W], ...}`` without random transforms.
        crop: side of the square crop.
        length: draws per epoch.
        seed: the augmentation seed.
    """

    def __init__(self, dataset: Dataset, crop: int, length: int, seed: int = 0) -> None:
        if length < 1 or len(dataset) == 0:
            raise ValueError(f"need a non-empty dataset and length >= 1, got {len(dataset)} samples, length {length}")
        self.dataset, self.crop, self.length, self.seed, self.epoch = dataset, crop, length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Use the draws of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        state = np.random.SeedSequence((self.seed, self.epoch, index)).generate_state(1)[0]
        generator = torch.Generator().manual_seed(int(state))
        augment = T.Compose([RandomCrop(self.crop, generator=generator), RandomFlipRotate(generator=generator)])
        return augment(self.dataset[index % len(self.dataset)])


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """Batch norm whose training mean and variance are pooled over all processes: ``nn.SyncBatchNorm`` for the
    CPU (gloo), which PyTorch implements for GPUs only. The all-reduce is differentiable, so the gradients
    are those of batch norm over the whole global batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        sums = all_reduce(torch.stack([x.sum((0, 2, 3)), x.square().sum((0, 2, 3))]))  # over every process
        count = x.numel() // x.shape[1] * torch.distributed.get_world_size()
        mean = sums[0] / count
        variance = sums[1] / count - mean.square()
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(variance * count / (count - 1), self.momentum)  # unbiased, as BatchNorm2d
            self.num_batches_tracked += 1
        scale = self.weight * torch.rsqrt(variance + self.eps)
        return x * scale[:, None, None] + (self.bias - mean * scale)[:, None, None]


def synchronise_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """The model with every ``BatchNorm2d`` pooling its statistics over the processes (weights, dtype kept).

    ``nn.SyncBatchNorm`` on CUDA, :class:`GlooSyncBatchNorm` on the CPU.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = GlooSyncBatchNorm(child.num_features, child.eps, child.momentum,
                                       device=child.weight.device, dtype=child.weight.dtype)  # fmt: skip
            synced.load_state_dict(child.state_dict())
            setattr(model, name, synced)
        else:
            synchronise_batch_norm(child, device)
    return model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; recipe values left out come from :data:`FIELD_UNET_RECIPE` of the mode."""
    parser = argparse.ArgumentParser(prog="python -m course_utils.train_fields", description=__doc__.split("\n")[0])
    parser.add_argument("--region", default="smallholder", help="smallholder or commercial")
    parser.add_argument("--mode", choices=MODES, help="data size and recipe (default: COURSE_MODE)")
    parser.add_argument("--epochs", type=int, help="epochs (recipe default)")
    parser.add_argument("--batch-size", type=int, help="GLOBAL batch size, split over the processes")
    parser.add_argument("--samples-per-epoch", type=int, help="random crops drawn per epoch")
    parser.add_argument("--width", type=int, help="channels of the U-Net's first level")
    parser.add_argument("--crop", type=int, help="side of the training crops")
    parser.add_argument("--lr", type=float, help="peak learning rate of AdamW (cosine schedule)")
    parser.add_argument("--loss", default="ce_dice", choices=LOSS_NAMES)
    parser.add_argument("--seed", type=int, default=0, help="training seed (weights, shuffling, crops)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers per process (default: sized)")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="float32 on the GPU too")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory layout")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--checkpoint", type=Path, help="resume file, written after every epoch")
    parser.add_argument("--out", type=Path, help="weights file (default: the notebooks' field U-Net checkpoint)")
    own = parser.add_argument_group("your own scene (instead of --region; the U-Net trains on one process)")
    own.add_argument("--image", type=Path, help="the scene: a GeoTIFF (any band count, any CRS)")
    own.add_argument("--fields", type=Path, help="field polygons (GeoPackage, Shapefile, GeoParquet, ...; any CRS)")
    own.add_argument("--bands", nargs="+", help="bands to use, by number (1-based) or name (default: all)")
    own.add_argument("--band-names", nargs="+", help="a name for each of the file's bands (default: its descriptions)")
    own.add_argument("--red", help="the red band's name, for NDVI in the baselines (default: a band named red)")
    own.add_argument("--nir", help="the near-infrared band's name (default: a band named nir); none: no NDVI")
    own.add_argument("--block", type=int, help="side of the split's blocks in px (default: 2 crops)")
    own.add_argument("--buffer", type=int, help="px left out between training, validation and test (default: crop/4)")
    own.add_argument("--area", type=Path, help="polygon(s) where the labels are complete (default: the fields' extent)")
    own.add_argument("--predict", type=Path, help="scene to predict and polygonise (default: --image)")
    own.add_argument("--out-dir", type=Path, help="output folder (default: results/train_fields/<scene name>)")
    return parser.parse_args(argv)


def _start_processes() -> tuple[int, int, torch.device]:
    """Join the process group when started by torchrun; returns ``(rank, world size, device)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return torch.distributed.get_rank(), world, device


def train(args: argparse.Namespace) -> History:
    """Train the field U-Net as ``args`` say, on this process's share; rank 0 writes weights and history.

    Raises:
        ValueError: if the global batch does not split evenly over the processes, or is larger than an epoch.
        FileExistsError: if the weights file exists (delete it, or pass another ``--out``).
    """
    rank, world, device = _start_processes()
    mode = args.mode or get_mode()
    given = {key: value for key, value in vars(args).items() if value is not None}
    overrides = {key: given[key] for key in FIELD_UNET_RECIPE[mode] if key in given}
    recipe = field_unet_recipe(args.region, mode, args.seed, args.loss, data_seed=args.data_seed, **overrides)
    out = args.out or field_unet_path(args.region, mode, args.seed, args.loss, data_seed=args.data_seed, **overrides)
    batch, draws = recipe["batch_size"], recipe["samples_per_epoch"]
    if batch % world or batch < world:
        raise ValueError(f"the global batch {batch} must be a multiple of the {world} processes; change --batch-size.")
    if draws < batch:
        raise ValueError(f"--samples-per-epoch {draws} is smaller than one batch ({batch}); raise it.")
    if rank == 0 and out.exists():
        raise FileExistsError(f"{out} exists; delete it to retrain, or pass --out with another file.")
    if rank == 0:
        ensure_fields(mode, args.data_seed)  # generated once, before the other processes read it
    if world > 1:
        torch.distributed.barrier()

    seed_everything(args.seed)
    chips = FieldChipDataset("train", args.region, mode, args.data_seed)
    val_set = FieldChipDataset("val", args.region, mode, args.data_seed, stats=chips.stats)
    train_set = SeededAugmentation(chips, recipe["crop"], draws, args.seed)
    masks = np.stack([read_raster(chips.folder / label)[0][0] for label in chips.catalog["label"]])
    model = UNet(in_channels=len(BANDS), classes=len(CLASS_NAMES), width=recipe["width"])
    model.set_stats(chips.stats)
    network: nn.Module = model
    if world > 1:
        network = synchronise_batch_norm(network, device)
        network = DistributedDataParallel(network.to(device), device_ids=[device] if device.type == "cuda" else None)

    options = loader_options(device, args.workers)
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=args.seed)
    # workers are started anew each epoch so that their copy of the dataset sees set_epoch
    train_loader = DataLoader(train_set, batch // world, sampler=sampler, drop_last=True,
                              **(options | {"persistent_workers": False}))  # fmt: skip
    val_loader = DataLoader(val_set, max(1, batch // world), **options)
    optimizer = torch.optim.AdamW(network.parameters(), lr=recipe["lr"], weight_decay=1e-4)
    scheduler = segmentation_scheduler(optimizer, recipe["schedule"], recipe["epochs"], recipe["hold"])
    if rank == 0:
        print(f"training field U-Net ({args.region}, {mode}) on {world} x {device.type}, global batch {batch} "
              f"({batch // world} per process), {draws} crops per epoch, {recipe['epochs']} epochs")  # fmt: skip
    started = time.perf_counter()
    history = fit(
        network, train_loader, val_loader, loss_fn=make_loss(args.loss, class_weights(masks, len(CLASS_NAMES))),
        optimizer=optimizer, epochs=recipe["epochs"], device=device, num_classes=len(CLASS_NAMES),
        monitor="val_miou", scheduler=scheduler, patience=recipe["patience"], min_delta=recipe["min_delta"],
        checkpoint=args.checkpoint,
        amp=args.amp and device.type == "cuda",
        progress=rank == 0, channels_last=args.channels_last, compile_model=args.compile,
    )  # fmt: skip
    if rank == 0:
        save_weights((network.module if world > 1 else network).state_dict(), out, recipe)
        with atomic_path(out.with_suffix(".history.json")) as tmp:
            tmp.write_text(json.dumps(asdict(history), indent=1))
        best = history.best
        print(f"best epoch {history.best_epoch}: val mIoU {best['val_miou']:.3f}, train loss {best['train_loss']:.4f}"
              f" in {time.perf_counter() - started:.1f} s -> {out}")  # fmt: skip
    if world > 1:
        torch.distributed.barrier()  # leave together: a rank that exits while rank 0 still writes can abort gloo
        torch.distributed.destroy_process_group()
    return history


@dataclass
class SceneResult:
    """What :func:`train_on_scene` made: the trained model, the test scores per method and the output files."""

    model: UNet
    loaded: bool
    scores: dict[str, dict[str, float]]
    prediction: Path
    fields: Path
    scores_file: Path


def _named_band(names: Sequence[str], wanted: str | None, role: str) -> int | None:
    """Position of band ``wanted`` among ``names`` (default: a band named ``role``), ``None`` when there is none."""
    lowered = [name.casefold() for name in names]
    if wanted is None:
        return lowered.index(role) if role in lowered else None
    if wanted.casefold() not in lowered:
        raise ValueError(f"--{role} {wanted!r} is not one of the bands used ({', '.join(names)}).")
    return lowered.index(wanted.casefold())


def _test_region(scene: FieldScene) -> gpd.GeoSeries:
    """The test part of a scene as polygons in its CRS."""
    part = polygonize(scene.mask("test").astype("uint8"), scene.profile["transform"], scene.profile["crs"],
                      min_area_px=1)  # fmt: skip
    return gpd.GeoSeries([part.geometry.union_all()], crs=scene.profile["crs"])


def score_test_part(scene: FieldScene, predicted: np.ndarray, region: gpd.GeoSeries) -> dict[str, float]:
    """Pixel and field scores of a predicted mask ``[H, W]`` of the whole scene on its test part.

    Pixels: edge F1, mean IoU of the three classes, extent IoU. Fields: the predicted interiors polygonised (grown
    by the edge width) and the reference polygons, both clipped to the test part, matched at IoU >= 0.5
    (:func:`course_utils.metrics.match_fields`); pieces under 4 px are dropped.
    """
    truth = scene.part_labels("test")
    cm = confusion_matrix(predicted, truth, 3, ignore_index=IGNORE)
    transform, crs = scene.profile["transform"], scene.profile["crs"]
    found = polygonize(np.where(truth != IGNORE, predicted, 0), transform, crs, field_values=(1,), grow_px=EDGE_PX)
    smallest = 4 * abs(transform.a * transform.e)
    clipped = [gpd.clip(layer.geometry, region).explode(ignore_index=True) for layer in (scene.fields, found)]
    reference, found = (layer[layer.area >= smallest] for layer in clipped)
    match = match_fields(reference, found)
    return {"edge_f1": edge_f1(cm), "miou": class_miou(cm), "extent_iou": extent_iou(cm),
            "field_precision": match.precision, "field_recall": match.recall, "field_f1": match.f1,
            "reference_fields": match.n_reference, "predicted_fields": match.n_predicted}  # fmt: skip


def predict_fields(
    model: UNet,
    image: str | os.PathLike,
    folder: str | os.PathLike,
    *,
    bands: Sequence[int | str] | None = None,
    band_names: Sequence[str] | None = None,
    tile: int = 256,
    window: Window | None = None,
    bounds: Sequence[float] | None = None,
    area: Any = None,
) -> tuple[Path, Path]:
    """Predict a scene (or a window, bounds or area of it) with a field U-Net and polygonise its fields.

    Writes ``prediction.tif`` (labels, the scene's CRS and grid) and ``fields.gpkg`` (one polygon per predicted
    field interior, grown by the edge width) into ``folder``; the inputs are normalised with ``model.stats``.

    Raises:
        ValueError: bands the model does not take (the message gives the counts), a part that misses the scene.
    """
    folder = Path(folder)
    indexes, _ = resolve_bands(image, bands, band_names)
    mean, std = model.stats
    tile = max(model.stride, tile // model.stride * model.stride)
    prediction = predict_raster(model, image, folder / "prediction.tif", tile=tile, overlap=tile // 8, bands=indexes,
                                mean=mean, std=std, window=window, bounds=bounds, area=area)  # fmt: skip
    labels, profile = read_raster(prediction)
    fields = polygonize(labels[0], profile["transform"], profile["crs"], field_values=(1,), grow_px=EDGE_PX)
    with atomic_path(folder / "fields.gpkg") as tmp:
        fields.to_file(tmp, driver="GPKG", layer="fields")
    return prediction, folder / "fields.gpkg"


def train_on_scene(
    image: str | os.PathLike,
    fields: str | os.PathLike | gpd.GeoDataFrame,
    *,
    bands: Sequence[int | str] | None = None,
    band_names: Sequence[str] | None = None,
    red: str | None = None,
    nir: str | None = None,
    mode: str | None = None,
    seed: int = 0,
    loss: str = "ce_dice",
    block: int | None = None,
    buffer: int | None = None,
    area: str | os.PathLike | gpd.GeoDataFrame | None = None,
    predict: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    **recipe: Any,
) -> SceneResult:
    """Train the field U-Net on your own scene and polygons, score it against the baselines, polygonise its fields.

    Args:
        image, fields: the scene (any band count and CRS) and its field polygons (any CRS; reprojected).
        bands, band_names: the bands to use and the names of the file's bands (:func:`resolve_bands`).
        red, nir: names of the red and near-infrared bands, for NDVI in the baselines (default: bands named so).
        mode: the recipe's mode (default ``COURSE_MODE``); ``recipe`` overrides its values (``epochs=2``, ...).
        seed: the training seed (the split's seed is 0: the same split for every training seed).
        loss: a :func:`course_utils.losses.make_loss` recipe.
        block, buffer: the split's block side and buffer in px (default: 2 crops and a quarter crop).
        area: where the labels are complete (default: the polygons' bounding box).
        predict: the scene to predict and polygonise at the end (default: ``image``), with the same bands.
        out_dir: where ``prediction.tif``, ``fields.gpkg`` and ``scores.json`` go (default:
            ``results/train_fields/<scene name>``).
        device: where to train and predict (default: :func:`course_utils.config.get_device`).
        progress: show the training's progress bar.

    Raises:
        ValueError: polygons that miss the scene, too few fields for a split, a scene smaller than a block or a
            crop, bands the model cannot take at prediction; nothing is written then.
    """
    mode = mode or get_mode()
    device = get_device(None if device is None else str(device))
    settings = field_unet_recipe("scene", mode, seed, loss, **recipe)
    crop = settings["crop"]
    image = Path(image)
    if not image.is_file():
        raise FileNotFoundError(f"no scene at {image}; check the path (relative paths start at {Path.cwd()}).")
    with rasterio.open(image) as src:
        if min(src.height, src.width) < crop:
            raise ValueError(f"{image.name} is {src.height} x {src.width} px, smaller than one {crop} px tile: "
                             "use a smaller --crop (a multiple of 8), or a larger scene.")  # fmt: skip
    print(f"[1/5] reading {image.name}, burning the field polygons, splitting into blocks")
    scene = FieldScene(image, fields, bands=bands, band_names=band_names, block=block or 2 * crop,
                       buffer=crop // 4 if buffer is None else buffer, area=area)  # fmt: skip
    in_buffers = len(scene.fields) - sum(scene.field_counts.values())
    print(f"      bands {', '.join(scene.band_names)}; {len(scene.fields)} fields (train, val, test: "
          f"{', '.join(map(str, scene.field_counts.values()))}; {in_buffers} centred in a buffer strip or outside "
          f"the parts); blocks of {scene.split.block} px, buffer {scene.split.buffer} px")  # fmt: skip
    other = len(resolve_bands(predict, bands, band_names)[0]) if predict is not None else len(scene.indexes)
    if other != len(scene.indexes):
        raise ValueError(f"{Path(predict).name} gives {other} bands but the "
                         f"model trains on {len(scene.indexes)} ({', '.join(scene.band_names)}): pick the same bands "
                         "from it with bands=[...] (and band_names=[...] to name them).")  # fmt: skip
    stats = scene.stats
    train_set = SceneCrops([scene], crop, settings["samples_per_epoch"], stats=stats)
    val_set = SceneTiles([scene], crop, "val", stats)
    settings = field_unet_recipe("scene", mode, seed, loss, dataset=f"{image.stem}-{scene.key}", **recipe)
    model = UNet(in_channels=len(scene.indexes), classes=len(CLASS_NAMES), width=settings["width"])
    model.set_stats(stats)

    def train_model(net: nn.Module) -> None:
        seed_everything(seed)
        labels = scene.part_labels("train")
        fit_segmentation(
            net, train_set, val_set, device=device, progress=progress, ignore_index=IGNORE,
            loss_fn=make_loss(loss, class_weights(labels[labels != IGNORE], len(CLASS_NAMES)), ignore_index=IGNORE),
            **{key: settings[key] for key in ("epochs", "batch_size", "lr", "samples_per_epoch", "schedule",
                                              "patience", "hold", "min_delta")},
        )  # fmt: skip
        net.cpu()

    defaults = FIELD_UNET_RECIPE[mode]  # say so when the overrides shorten or change the mode's recipe
    shortened = any(settings[key] < defaults[key] for key in ("epochs", "samples_per_epoch"))
    changed = any(settings[key] != value for key, value in defaults.items())
    which = f"{mode} recipe" + (", shortened" if shortened else ", changed" if changed else "")
    unshortened = f"; unshortened: {defaults['epochs']} epochs of {defaults['samples_per_epoch']}" if shortened else ""
    print(f"[2/5] the U-Net ({which}: {settings['epochs']} epochs of {settings['samples_per_epoch']} crops "
          f"of {crop} px{unshortened})")  # fmt: skip
    base = checkpoint_dir() / f"field_unet_{image.stem}_{mode}_seed{seed}.pt"
    loaded = load_or_train(model, base, train_model, settings)
    model.eval()

    print("[3/5] the baselines, tuned on the validation part")
    positions = scene.band_names
    red_at, nir_at = _named_band(positions, red, "red"), _named_band(positions, nir, "nir")
    if (red_at is None) != (nir_at is None):
        red_at = nir_at = None
    train_rows, train_cols = scene.part_bounds("train")
    val_rows, val_cols = scene.part_bounds("val")
    train_part = scene.image[None, :, train_rows, train_cols], scene.part_labels("train")[None, train_rows, train_cols]
    val_part = scene.image[None, :, val_rows, val_cols], scene.part_labels("val")[None, val_rows, val_cols]
    rule = fit_threshold_rule(*val_part, red=red_at, nir=nir_at, edge_px=EDGE_PX)
    forest = PixelForest(trees=by_mode(mode, smoke=10, lite=40, full=100),
                         pixels=by_mode(mode, smoke=5_000, lite=30_000, full=60_000), red=red_at, nir=nir_at,
                         neighbourhood=2, seed=seed)  # fmt: skip
    depths = by_mode(mode, smoke=(6, 12), lite=(8, 14, 20, 28), full=(8, 14, 20, 28))
    forest.depth, _ = choose_forest_depth(forest, depths, train_part, val_part)
    forest.fit(*train_part)
    score_name = "NDVI" if rule.band is None else f"band {positions[rule.band]}"
    edge = " (the deepest tried)" if forest.depth == max(depths) else " (the shallowest tried)" if forest.depth == min(
        depths) else ""  # fmt: skip
    print(f"      threshold rule: {score_name} {'>' if rule.above else '<'} {rule.threshold:.4g}; forest depth "
          f"{forest.depth}{edge} of {', '.join(map(str, depths))}")  # fmt: skip

    output = Path(out_dir) if out_dir is not None else results_dir() / "train_fields" / image.stem
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}-") as temporary:
        staging = Path(temporary)
        print("[4/5] predicting the scene and scoring the test part")
        tile = by_mode(mode, smoke=128, lite=256, full=256)
        own = predict_fields(model, image, staging / "own", bands=scene.indexes, tile=tile)
        if predict is None:
            prediction, polygons = own
        else:  # the same bands, picked from the other scene by name or number as given
            prediction, polygons = predict_fields(model, predict, staging, bands=bands, band_names=band_names,
                                                  tile=tile)  # fmt: skip
        test_rows, test_cols = scene.part_bounds("test")
        methods = {"U-Net": read_raster(own[0])[0][0]}
        for name, method in (("threshold rule", rule), ("pixel forest", forest)):
            methods[name] = np.zeros(scene.labels.shape, np.uint8)
            methods[name][test_rows, test_cols] = method.predict(scene.image[None, :, test_rows, test_cols])[0]
        region = _test_region(scene)
        scores = {name: score_test_part(scene, mask, region) for name, mask in methods.items()}
        print("[5/5] writing the outputs")
        record = {"scene": str(image), "bands": scene.band_names, "mode": mode, "seed": seed, "test": scores}
        (staging / "scores.json").write_text(json.dumps(record, indent=1))
        output.mkdir(parents=True, exist_ok=True)
        for file in (prediction, polygons, staging / "scores.json"):
            os.replace(file, output / file.name)
    columns = ("edge_f1", "miou", "extent_iou", "field_precision", "field_recall", "field_f1")
    pieces = next(iter(scores.values()))["reference_fields"]  # the same reference pieces for every method
    print(f"\ntest part of {image.name} ({scene.field_counts['test']} fields in the split; {pieces} clipped pieces "
          "of at least 4 px scored):")
    print(f"{'method':16s}" + "".join(f"{c:>17s}" for c in columns))
    for name, values in scores.items():
        print(f"{name:16s}" + "".join(f"{values[c]:17.3f}" for c in columns))
    print(f"-> {output / 'prediction.tif'}, {output / 'fields.gpkg'}, {output / 'scores.json'}")
    return SceneResult(model, loaded, scores, output / "prediction.tif", output / "fields.gpkg", output / "scores.json")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; with ``--image``, bad inputs end with a message (exit status 2), not a traceback."""
    args = parse_args(argv)
    if args.image is None:
        if args.fields is not None:
            raise SystemExit("--fields goes with --image (the scene the polygons are on).")
        train(args)
        return 0
    if args.fields is None:
        raise SystemExit("--image needs --fields: the field polygons to train on (e.g. --fields fields.gpkg).")
    given = {key: value for key, value in vars(args).items() if value is not None}
    recipe = {key: given[key] for key in FIELD_UNET_RECIPE["smoke"] if key in given}
    try:
        train_on_scene(args.image, args.fields, bands=args.bands, band_names=args.band_names, red=args.red,
                       nir=args.nir, mode=args.mode, seed=args.seed, loss=args.loss, block=args.block,
                       buffer=args.buffer, area=args.area, predict=args.predict, out_dir=args.out_dir,
                       **recipe)  # fmt: skip
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    stop_cleanly_on_sigterm()  # a killed run removes its temporaries as Ctrl-C does
    sys.exit(main())
