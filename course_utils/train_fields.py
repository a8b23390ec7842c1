"""Train the course's field U-Net from the command line, on one process or on many with DistributedDataParallel.

    python -m course_utils.train_fields --region smallholder --epochs 5 --batch-size 8
    torchrun --nproc_per_node=4 -m course_utils.train_fields --region smallholder --epochs 40 --batch-size 64

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
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2 as T
from torch import nn
from torch.distributed.nn.functional import all_reduce
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from course_utils.config import MODES, get_mode, seed_everything
from course_utils.data.fields import BANDS, FieldChipDataset, ensure_fields
from course_utils.files import atomic_path, stop_cleanly_on_sigterm
from course_utils.geo import read_raster
from course_utils.losses import LOSS_NAMES, class_weights, make_loss
from course_utils.models.unet import (
    CLASS_NAMES,
    FIELD_UNET_RECIPE,
    UNet,
    field_unet_path,
    field_unet_recipe,
    segmentation_scheduler,
)
from course_utils.train import History, fit, loader_options, save_weights
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


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    stop_cleanly_on_sigterm()  # a killed run removes its temporaries as Ctrl-C does
    sys.exit(main())
