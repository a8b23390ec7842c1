"""Training throughput of the course's U-Net loop against a naive loop, on the same data and model.

    python benchmarks/bench_training.py [--mode lite] [--epochs 3] [--samples-per-epoch 64]   (make bench)
    python benchmarks/bench_training.py --loops course --threads 1     # then --threads 2: which is faster?

Both loops train the field U-Net (:class:`course_utils.models.unet.UNet`, the mode's recipe) on the same random
crops of the field chips (same seed, same draws) from the same initial weights, and validate after each epoch:

* **naive**: float32, ``loss.item()`` after every step and the confusion matrix on the host (each forces the
  host to wait for the device), batches read in the training process (no workers, no pinned memory);
* **course**: :func:`course_utils.train.fit` with :func:`course_utils.train.loader_options`, ``amp=True``
  (bfloat16 on a recent GPU; off on the CPU) and ``channels_last=True``; metrics stay on the device.

It reports samples per second (training samples of an epoch / the epoch's seconds, validation included, the
first epoch left out as warm-up), their ratio, and the share of the training phase spent waiting for the next
batch (time inside ``next(loader)``; on a GPU an upper bound of its idle time). CPU seconds of the process and
its worker processes are reported too, since a shared CPU makes wall time noisy. ``--threads`` sets PyTorch's
intra-op threads (the default is what :func:`course_utils.config.setup_notebook` gives a notebook); comparing
runs with 1 and 2 of them tells which suits the course's small models on this machine. Results go to
``benchmarks/results/training_<device>[_<threads>threads].json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from course_utils.config import default_torch_threads, device_name, get_device, get_mode, seed_everything
from course_utils.metrics import confusion_matrix
from course_utils.models.unet import CLASS_NAMES, FIELD_UNET_RECIPE, UNet, field_datasets
from course_utils.train import fit, loader_options

RESULTS = Path(__file__).resolve().parent / "results"


class TimedBatches:
    """Wraps a loader: records, per pass, the seconds spent waiting in ``next()`` and the whole pass."""

    def __init__(self, loader: DataLoader, device: torch.device) -> None:
        self.loader, self.device = loader, device
        self.waits: list[float] = []
        self.spans: list[float] = []

    def __iter__(self) -> Iterator[Any]:
        started, waited = time.perf_counter(), 0.0
        batches = iter(self.loader)
        while True:
            asked = time.perf_counter()
            batch = next(batches, None)
            waited += time.perf_counter() - asked
            if batch is None:
                break
            yield batch
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the pass ends when the device has done its work
        self.waits.append(waited)
        self.spans.append(time.perf_counter() - started)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished children (DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def naive_loop(
    model: nn.Module, train: TimedBatches, val: DataLoader, epochs: int, lr: float, device: torch.device
) -> list[float]:
    """The loop as first written: float32, a ``.item()`` per step, host-side metrics. Seconds per epoch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    model.to(device)
    seconds = []
    for _ in range(epochs):
        started = time.perf_counter()
        model.train()
        losses = []
        for batch in train:
            image, mask = batch["image"].to(device), batch["mask"].to(device)
            loss = loss_fn(model(image), mask)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            for batch in val:
                logits = model(batch["image"].to(device))
                losses.append(loss_fn(logits, batch["mask"].to(device)).item())
                confusion_matrix(logits.argmax(1), batch["mask"], len(CLASS_NAMES))
        seconds.append(time.perf_counter() - started)
    return seconds


def course_loop(
    model: nn.Module, train: TimedBatches, val: DataLoader, epochs: int, lr: float, device: torch.device
) -> list[float]:
    """:func:`course_utils.train.fit` with mixed precision and channels-last. Seconds per epoch."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    history = fit(
        model, train, val, loss_fn=nn.CrossEntropyLoss(), optimizer=optimizer, epochs=epochs, device=device,
        num_classes=len(CLASS_NAMES), amp=True, channels_last=True, progress=False,
    )  # fmt: skip
    return history.column("seconds")


def run(loop: str, args: argparse.Namespace, device: torch.device, train_set: Dataset, val_set: Dataset) -> dict:
    """One loop's numbers: samples/s, data-wait share and CPU seconds, from the same weights and draws."""
    recipe = FIELD_UNET_RECIPE[args.mode]
    batch = recipe["batch_size"]
    options = loader_options(device) if loop == "course" else {}
    draws = torch.Generator().manual_seed(0)
    sampler = RandomSampler(train_set, replacement=True, num_samples=args.samples_per_epoch, generator=draws)
    train = TimedBatches(DataLoader(train_set, batch, sampler=sampler, drop_last=True, **options), device)
    val = DataLoader(val_set, batch, **options)
    seed_everything(0)
    model = UNet(width=recipe["width"])
    cpu_before = cpu_seconds()
    seconds = (course_loop if loop == "course" else naive_loop)(model, train, val, args.epochs, recipe["lr"], device)
    waits, spans = train.waits[1:], train.spans[1:]  # the first epoch is warm-up (workers start, kernels chosen)
    del train, val  # ends the worker processes, so that their CPU time is counted
    gc.collect()
    samples = args.samples_per_epoch // batch * batch
    return {
        "loop": loop,
        "samples_per_second": round(samples * len(seconds[1:]) / sum(seconds[1:]), 2),
        "data_wait_share": round(sum(waits) / sum(spans), 3),
        "epoch_seconds": [round(s, 2) for s in seconds],
        "cpu_seconds": round(cpu_seconds() - cpu_before, 1),
        "workers": options.get("num_workers", 0),
    }


def main(argv: list[str] | None = None) -> int:
    """Run both loops, print the comparison and write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", default=None, choices=("smoke", "lite", "full"), help="recipe (default: COURSE_MODE)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per loop; the first is warm-up")
    parser.add_argument("--samples-per-epoch", type=int, help="training crops per epoch (default: the recipe's)")
    parser.add_argument("--region", default="smallholder")
    parser.add_argument("--loops", nargs="+", default=["naive", "course"], choices=("naive", "course"))
    parser.add_argument("--threads", type=int, help="PyTorch threads (default: what setup_notebook sets)")
    args = parser.parse_args(argv)
    args.mode = args.mode or get_mode()
    recipe = FIELD_UNET_RECIPE[args.mode]
    args.samples_per_epoch = args.samples_per_epoch or recipe["samples_per_epoch"]
    if args.epochs < 2 or args.samples_per_epoch < recipe["batch_size"]:
        parser.error("need --epochs >= 2 (the first is warm-up) and at least one batch per epoch")
    torch.set_num_threads(args.threads or default_torch_threads())
    device = get_device()
    train_set, val_set, _ = field_datasets(args.region, args.mode, crop=recipe["crop"])
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    print(f"device {device_name(device)}, OMP_NUM_THREADS={threads}, {os.cpu_count()} cores, mode {args.mode}: "
          f"U-Net width {recipe['width']}, batch {recipe['batch_size']}, {recipe['crop']} px crops, "
          f"{args.samples_per_epoch} samples x {args.epochs} epochs per loop")  # fmt: skip
    rows = [run(loop, args, device, train_set, val_set) for loop in args.loops]
    for row in rows:
        print(f"{row['loop']:>6}: {row['samples_per_second']:8.2f} samples/s, waiting for data "
              f"{row['data_wait_share']:.1%} of the training phase, {row['workers']} workers, "
              f"{row['cpu_seconds']} CPU s, epochs {row['epoch_seconds']} s")  # fmt: skip
    record = {"device": device_name(device), "torch": torch.__version__, "omp_num_threads": threads,
              "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "mode": args.mode,
              "epochs": args.epochs, "samples_per_epoch": args.samples_per_epoch,
              "measured": time.strftime("%Y-%m-%d %H:%M"), "loops": rows}  # fmt: skip
    if len(rows) == 2:
        record["speedup"] = round(rows[1]["samples_per_second"] / rows[0]["samples_per_second"], 3)
        print(f"course loop / naive loop: {record['speedup']:.2f}x samples per second")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"training_{device.type}{f'_{args.threads}threads' if args.threads else ''}.json"
    out.write_text(json.dumps(record, indent=1))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
