"""A plain, readable training loop: fit, evaluate, early stopping, best-weights checkpoint, resume.

Notebook 01 writes the loop out once by hand; from then on the course uses :func:`fit`, which does
the same steps with the bookkeeping every project needs:

* one progress bar per run (tqdm), one line of history per epoch (losses, metrics, learning rate, time);
* validation after every epoch, and a copy of the best weights (a real copy, not a reference to
  tensors that keep changing), restored at the end;
* early stopping when the monitored value has not improved for ``patience`` epochs;
* an optional checkpoint file, written atomically, from which an interrupted run resumes;
* :func:`load_or_train`: load a trained model when its file exists, train and save it otherwise, so a
  short session still shows converged results and later notebooks reuse earlier models.

Batches can be ``(inputs, targets)`` tuples or the dicts the course's Datasets return; ``inputs`` and
``target`` name the keys to use. With ``num_classes`` the loop also accumulates a confusion matrix and
reports accuracy, mean IoU and macro F1 (for classification and segmentation alike).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm  # the text bar: works in terminals and notebooks without ipywidgets

from course_utils.files import atomic_path
from course_utils.metrics import accuracy, confusion_matrix, mean_f1, mean_iou

Batch = dict[str, Any] | Sequence[Any]
Inputs = str | Sequence[str]


def split_batch(batch: Batch, inputs: Inputs = "image", target: str = "mask") -> tuple[tuple[Any, ...], Any]:
    """``(model arguments, target)`` of a batch: ``(x, y)`` tuples as they are, dicts by key.

    ``inputs`` may name several keys (``("s2", "s1")``); the model is then called with one argument each.
    """
    if isinstance(batch, dict):
        keys = (inputs,) if isinstance(inputs, str) else tuple(inputs)
        missing = [k for k in (*keys, target) if k not in batch]
        if missing:
            raise KeyError(f"the batch has no {missing}; it has {sorted(batch)}. Set inputs=/target= to its keys.")
        return tuple(batch[k] for k in keys), batch[target]
    if len(batch) < 2:
        raise ValueError("a tuple batch must be (inputs, targets)")
    return (batch[0],), batch[1]


def _to(values: Any, device: torch.device) -> Any:
    if isinstance(values, torch.Tensor):
        return values.to(device, non_blocking=True)
    if isinstance(values, tuple):
        return tuple(_to(v, device) for v in values)
    return values


def _autocast(device: torch.device, amp: bool) -> torch.autocast:
    """bfloat16 autocast on a GPU when ``amp`` is on (no loss scaling needed with bfloat16)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device,
    *,
    inputs: Inputs = "image",
    target: str = "mask",
    num_classes: int | None = None,
    ignore_index: int | None = None,
    amp: bool = False,
) -> dict[str, Any]:
    """Mean loss over a loader and, with ``num_classes``, accuracy, mean IoU, macro F1 and the confusion matrix.

    The model is put in eval mode (dropout off, batch norm uses its running statistics) and back afterwards.
    """
    was_training = model.training
    model.eval()
    total_loss, count = torch.zeros((), device=device), 0
    cm = np.zeros((num_classes, num_classes), dtype=np.int64) if num_classes else None
    for batch in loader:
        args, y = _to(split_batch(batch, inputs, target), device)
        with _autocast(device, amp):
            outputs = model(*args)
            loss = loss_fn(outputs, y)
        size = len(y)
        total_loss += loss.float() * size
        count += size
        if cm is not None:
            cm += confusion_matrix(outputs.argmax(1), y, num_classes, ignore_index=ignore_index)
    model.train(was_training)
    if count == 0:
        raise ValueError("the loader is empty: nothing to evaluate")
    result: dict[str, Any] = {"loss": float(total_loss) / count}
    if cm is not None:
        result.update(accuracy=accuracy(cm), miou=mean_iou(cm), f1=mean_f1(cm), confusion=cm)
    return result


@dataclass
class History:
    """What :func:`fit` did: one record per epoch, the best epoch and the monitored value there."""

    records: list[dict[str, float]] = field(default_factory=list)
    monitor: str = "val_loss"
    best_epoch: int = 0
    best_value: float = math.nan
    stopped_early: bool = False

    def column(self, name: str) -> list[float]:
        """One value per epoch, e.g. ``history.column("val_loss")``."""
        return [record[name] for record in self.records]

    @property
    def best(self) -> dict[str, float]:
        """The record of the best epoch."""
        return next(r for r in self.records if r["epoch"] == self.best_epoch)


def _save_atomic(payload: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def fit(
    model: nn.Module,
    train_loader: Iterable[Batch],
    val_loader: Iterable[Batch],
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    epochs: int,
    device: torch.device,
    inputs: Inputs = "image",
    target: str = "mask",
    num_classes: int | None = None,
    ignore_index: int | None = None,
    monitor: str = "val_loss",
    patience: int | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    checkpoint: str | os.PathLike | None = None,
    amp: bool = False,
    progress: bool = True,
) -> History:
    """Train ``model`` for up to ``epochs`` epochs, validating after each; keep and restore the best weights.

    Args:
        model: the network; moved to ``device``.
        train_loader, val_loader: iterables of batches (``(x, y)`` tuples or dicts).
        loss_fn: ``loss_fn(outputs, targets)`` -> scalar tensor.
        optimizer: built on ``model.parameters()``.
        epochs: the most epochs to run.
        device: where to compute.
        inputs, target: batch keys for dict batches (see :func:`split_batch`).
        num_classes: also report accuracy, mIoU and macro F1 (``val_accuracy``, ``val_miou``, ``val_f1``).
        ignore_index: target value left out of the metrics (and of the loss, if ``loss_fn`` says so).
        monitor: the history column that decides the best epoch; ``*loss`` is minimised, anything else
            maximised.
        patience: stop after this many epochs without improvement (``None``: never stop early).
        scheduler: stepped once per epoch (``ReduceLROnPlateau`` gets the monitored value).
        checkpoint: file for the latest state and the best weights; if it exists, training resumes from it.
        amp: bfloat16 mixed precision on a GPU (ignored on the CPU).
        progress: show a progress bar over epochs.

    Returns:
        The :class:`History`; ``model`` holds the best epoch's weights.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    model.to(device)
    history = History(monitor=monitor)
    best_state: dict[str, torch.Tensor] | None = None
    start = 1
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.is_file():
        saved = torch.load(path, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None and saved.get("scheduler") is not None:
            scheduler.load_state_dict(saved["scheduler"])
        history, best_state = saved["history"], saved["best_state"]
        start = history.records[-1]["epoch"] + 1 if history.records else 1
        print(f"resuming from {path} after epoch {start - 1}")
    if history.stopped_early:
        epochs = start - 1  # the saved run had stopped early: there is nothing left to train
    minimise = monitor.endswith("loss")
    waited = start - 1 - history.best_epoch if history.records else 0
    bar = tqdm(range(start, epochs + 1), desc="epochs", disable=not progress, leave=True)
    for epoch in bar:
        started = time.perf_counter()
        model.train()
        total_loss, count = torch.zeros((), device=device), 0
        for batch in train_loader:
            args, y = _to(split_batch(batch, inputs, target), device)
            with _autocast(device, amp):
                loss = loss_fn(model(*args), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.detach().float() * len(y)  # stays on the device: no sync per batch
            count += len(y)
        if count == 0:
            raise ValueError("the training loader is empty")
        val = evaluate(
            model, val_loader, loss_fn, device, inputs=inputs, target=target,
            num_classes=num_classes, ignore_index=ignore_index, amp=amp,
        )  # fmt: skip
        record = {"epoch": epoch, "train_loss": float(total_loss) / count, "lr": optimizer.param_groups[0]["lr"]}
        record.update({f"val_{k}": v for k, v in val.items() if k != "confusion"})
        record["seconds"] = time.perf_counter() - started
        history.records.append(record)
        if monitor not in record:
            raise KeyError(f"monitor {monitor!r} is not in the history columns {sorted(record)}")
        value = record[monitor]
        best = history.best_value
        if math.isnan(best) or (value < best if minimise else value > best):
            history.best_epoch, history.best_value, waited = epoch, value, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}  # a copy, not a view
        else:
            waited += 1
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(value)
        elif scheduler is not None:
            scheduler.step()
        history.stopped_early = patience is not None and waited >= patience
        if path is not None:  # saved after the patience check, so a finished run is not resumed
            _save_atomic(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "history": history,
                    "best_state": best_state,
                },
                path,
            )
        bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in ("train_loss", "val_loss", monitor)})
        if history.stopped_early:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return history


def load_or_train(model: nn.Module, path: str | os.PathLike, train: Callable[[nn.Module], Any]) -> bool:
    """Load ``model``'s weights from ``path`` if the file exists; otherwise ``train(model)`` and save them.

    Returns:
        ``True`` when the weights were loaded, ``False`` when the model was trained now.
    """
    path = Path(path)
    if path.is_file():
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise RuntimeError(
                f"{path} does not fit this model (was the architecture changed?); delete the file to retrain."
            ) from error
        print(f"loaded trained weights from {path}")
        return True
    train(model)
    _save_atomic(model.state_dict(), path)
    print(f"saved trained weights to {path}")
    return False
