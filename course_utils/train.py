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

Speed: a GPU spends its time waiting unless the loop keeps it fed and never waits for it. So

* losses and the confusion matrix are summed *on the device* and read once per epoch: a ``.item()`` per
  step would make the host wait for every kernel to finish before it may queue the next batch;
* :func:`loader_options` sizes the DataLoader to the machine (worker processes read and augment the next
  batches while the GPU computes; pinned memory lets the copy to the GPU run in the background);
* ``amp=True`` computes in 16-bit floats on a GPU (bfloat16 where supported, else float16 with loss
  scaling), which halves memory traffic and uses the tensor cores; on the CPU it is off;
* ``channels_last=True`` stores images as ``[B, H, W, C]`` in memory, the layout GPU convolutions prefer;
* ``compile_model=True`` runs ``torch.compile`` (worth it for long GPU runs; it falls back to the plain
  model with a warning when compiling fails).

Under ``torchrun`` (see :mod:`course_utils.train_fields`) the same loop trains a DistributedDataParallel
model: it calls ``set_epoch`` on the training sampler and dataset, averages the training loss over the
processes and writes the checkpoint from rank 0 only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm  # the text bar: works in terminals and notebooks without ipywidgets

from course_utils.config import DATA_VERSIONS, available_cpus
from course_utils.files import atomic_path
from course_utils.metrics import accuracy, mean_f1, mean_iou

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


def _batch_size(target: Any) -> int:
    """Samples in a batch's target: a tensor, or a tuple/list/dict of per-task tensors (multitask)."""
    if isinstance(target, dict):
        target = next(iter(target.values()))
    elif isinstance(target, tuple | list):
        target = target[0]
    return len(target)


def loader_options(device: torch.device, num_workers: int | None = None) -> dict[str, Any]:
    """DataLoader keyword arguments sized to this machine: ``DataLoader(dataset, batch, **loader_options(device))``.

    Args:
        device: where the batches go; pinned (page-locked) host memory is used for CUDA only.
        num_workers: worker processes; default one per available core, less one for the training process,
            shared among the processes of a ``torchrun`` on this machine (``LOCAL_WORLD_SIZE``), at most 8.

    Returns:
        ``num_workers``, ``pin_memory`` and ``persistent_workers`` (workers kept between epochs).
    """
    if num_workers is None:
        local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        num_workers = min(8, max(0, available_cpus() // local_processes - 1))
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    return {"num_workers": num_workers, "pin_memory": device.type == "cuda", "persistent_workers": num_workers > 0}


def _to(values: Any, device: torch.device, channels_last: bool = False) -> Any:
    if isinstance(values, torch.Tensor):
        if channels_last and values.ndim == 4:
            return values.to(device, non_blocking=True, memory_format=torch.channels_last)
        return values.to(device, non_blocking=True)
    if isinstance(values, tuple):
        return tuple(_to(v, device, channels_last) for v in values)
    return values


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision type ``amp=True`` uses on ``device``: bfloat16 on a CUDA GPU that supports it
    (Ampere and newer), float16 on an older GPU (with loss scaling), ``None`` (full float32) elsewhere."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, amp: bool = True, *, scaled: bool = False) -> torch.autocast:
    """The mixed-precision context for ``device`` (see :func:`amp_dtype`); plain float32 when ``amp`` is off.

    ``scaled``: the caller scales the loss (a ``GradScaler``), so float16 may be used on GPUs without
    bfloat16; a training loop without loss scaling keeps float32 there, since float16 gradients underflow.
    Inference needs no scaling: pass ``scaled=True``.
    """
    dtype = amp_dtype(device) if amp else None
    if dtype == torch.float16 and not scaled:
        dtype = None
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


class _CompiledOrEager(nn.Module):
    """``torch.compile`` of a model's forward; if compiling fails, one warning and the plain model from then on."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.compiled: Callable[..., Any] | None = torch.compile(model.forward)

    def forward(self, *args: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except Exception as error:  # any compiler failure: the eager model computes the same thing
                warnings.warn(f"torch.compile failed ({type(error).__name__}); running the model uncompiled.",
                              stacklevel=2)  # fmt: skip
                self.compiled = None
        return self.model(*args)


def _rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (``(0, 1)`` outside ``torch.distributed``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _add_confusion(
    cm: torch.Tensor, invalid: torch.Tensor, predicted: torch.Tensor, target: torch.Tensor, ignore_index: int | None
) -> None:
    """Add a batch to a flat on-device confusion matrix without a host sync; count out-of-range labels."""
    num_classes = math.isqrt(cm.numel())
    predicted, target = predicted.reshape(-1), target.reshape(-1).long()
    counted = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
    in_range = (target >= 0) & (target < num_classes) & (predicted < num_classes)
    invalid += (counted & ~in_range).sum()
    keep = counted & in_range
    cm.scatter_add_(0, torch.where(keep, target * num_classes + predicted, 0), keep.long())


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
    channels_last: bool = False,
) -> dict[str, Any]:
    """Mean loss over a loader and, with ``num_classes``, accuracy, mean IoU, macro F1 and the confusion matrix.

    The model is put in eval mode (dropout off, batch norm uses its running statistics) and back afterwards.
    Losses and counts stay on the device until the end (one host sync per call). ``amp`` and
    ``channels_last`` as in :func:`fit`.

    Raises:
        ValueError: for an empty loader, or targets/predictions outside ``0..num_classes - 1``.
    """
    was_training = model.training
    model.eval()
    total_loss, count = torch.zeros((), device=device), 0
    cm = torch.zeros(num_classes**2, dtype=torch.int64, device=device) if num_classes else None
    invalid = torch.zeros((), dtype=torch.int64, device=device)
    for batch in loader:
        args, y = _to(split_batch(batch, inputs, target), device, channels_last)
        with autocast(device, amp, scaled=True):
            outputs = model(*args)
            loss = loss_fn(outputs, y)
        size = _batch_size(y)
        total_loss += loss.float() * size
        count += size
        if cm is not None:
            _add_confusion(cm, invalid, outputs.argmax(1), y, ignore_index)
    model.train(was_training)
    if count == 0:
        raise ValueError("the loader is empty: nothing to evaluate")
    result: dict[str, Any] = {"loss": float(total_loss) / count}
    if cm is not None and num_classes is not None:
        if int(invalid):
            raise ValueError(f"{int(invalid)} targets or predictions lie outside the classes 0..{num_classes - 1}; "
                             "check num_classes, the model's output channels and ignore_index.")  # fmt: skip
        matrix = cm.reshape(num_classes, num_classes).cpu().numpy()
        result.update(accuracy=accuracy(matrix), miou=mean_iou(matrix), f1=mean_f1(matrix), confusion=matrix)
    return result


@dataclass
class History:
    """What :func:`fit` did: one record per epoch, the best epoch and the monitored value there.

    ``improved_epoch`` is the last epoch that beat the best before it by more than ``min_delta``: smaller gains
    keep the better weights but count neither as "still improving" (:attr:`converged`) nor for patience.
    """

    records: list[dict[str, float]] = field(default_factory=list)
    monitor: str = "val_loss"
    best_epoch: int = 0
    best_value: float = math.nan
    stopped_early: bool = False
    min_delta: float = 0.0
    improved_epoch: int | None = None  # None: the best epoch (as in files written before it was recorded)

    def __post_init__(self) -> None:
        if self.improved_epoch is None:
            self.improved_epoch = self.best_epoch

    def column(self, name: str) -> list[float]:
        """One value per epoch, e.g. ``history.column("val_loss")``."""
        return [record[name] for record in self.records]

    @property
    def best(self) -> dict[str, float]:
        """The record of the best epoch."""
        return next(r for r in self.records if r["epoch"] == self.best_epoch)

    @property
    def converged(self) -> bool:
        """Whether the monitored value had stopped improving: the last epoch run did not beat the best before
        it by more than ``min_delta``.

        ``False`` means the run was still improving when it ended; train longer before drawing conclusions.
        """
        return bool(self.records) and (self.improved_epoch or 0) < self.records[-1]["epoch"]


def _save_atomic(payload: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint file's contents, read safely (``weights_only``: tensors and plain Python values only).

    Raises:
        ValueError: naming the file when it is empty, truncated, not a checkpoint, or holds code to run
            (delete it to retrain).
    """
    path = Path(path)
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, ValueError) as error:
        reason = (str(error).strip().splitlines() or ["empty file"])[0][:200]
        raise ValueError(
            f"{path} is not a readable checkpoint ({type(error).__name__}: {reason}); it may be truncated by an "
            "interrupted copy, or not written by the course. Delete it to retrain."
        ) from error


def recipe_key(recipe: Mapping[str, Any]) -> str:
    """Ten hex digits that change with any value of ``recipe`` and with the data's version (SHA-256 of sorted JSON).

    Put every setting that changes the trained weights in the recipe: hyperparameters, data seed, training
    seed and the key of any checkpoint it starts from. Values must be JSON types (numbers, strings, lists).
    The versions of the generated data families (:data:`course_utils.config.DATA_VERSIONS`) are added to every
    recipe (:func:`versioned_recipe`), so a model trained on an older generator's data is never reused.
    """
    return hashlib.sha256(_plain(versioned_recipe(recipe)).encode()).hexdigest()[:10]


def versioned_recipe(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """``recipe`` with the generated data families' versions under ``"data_versions"``, as checkpoints record it."""
    return {**recipe, "data_versions": dict(DATA_VERSIONS)}


def _plain(values: Any) -> str:
    """Canonical JSON of a recipe; refuses values JSON would change silently."""
    try:
        return json.dumps(values, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"a recipe holds numbers, strings, booleans, None, lists and dicts only ({error})") from error


def keyed_path(path: str | os.PathLike, recipe: Mapping[str, Any]) -> Path:
    """``path`` with the recipe's key before the suffix: ``unet.pt`` -> ``unet-<key>.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}-{recipe_key(recipe)}{path.suffix}")


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys: ``{"optimizer": {"lr": 0.1}}`` -> ``{"optimizer.lr": 0.1}``."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _differences(saved: Mapping[str, Any], now: Mapping[str, Any], most: int = 6) -> list[str]:
    """``key: <saved> in the file, <now> now`` for each setting that differs (compared as JSON), at most ``most``."""
    saved, now = _flat(saved), _flat(now)
    as_json = {key: [json.dumps(d.get(key), sort_keys=True, default=str) for d in (saved, now)] for key in saved | now}
    lines = [f"{key}: {old} in the file, {new} now" for key, (old, new) in sorted(as_json.items()) if old != new]
    return lines[:most] + ([f"... and {len(lines) - most} more"] if len(lines) > most else [])


def _architecture(model: nn.Module) -> dict[str, list[int]]:
    return {name: list(value.shape) for name, value in model.state_dict().items()}


#: Scheduler state that is progress, not a setting (it changes every epoch).
_SCHEDULER_PROGRESS = {"last_epoch", "base_lrs", "best", "num_bad_epochs", "cooldown_counter"}


def _fit_settings(
    model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, monitor: str, recipe: Mapping[str, Any] | None
) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote the checkpoint (``epochs`` may grow: train longer)."""
    groups = [
        {
            k: (g.get("initial_lr", g["lr"]) if k == "lr" else v)
            for k, v in g.items()
            if k not in ("params", "initial_lr")
        }
        for g in optimizer.param_groups
    ]
    settings: dict[str, Any] = {
        "architecture": _architecture(model),
        "optimizer": {"type": type(optimizer).__name__}
        | (groups[0] if len(groups) == 1 else {f"group{i}": g for i, g in enumerate(groups)}),
        "monitor": monitor,
        "recipe": versioned_recipe(recipe or {}),
    }
    if scheduler is not None:
        state = scheduler.state_dict()
        settings["scheduler"] = {"type": type(scheduler).__name__} | {
            k: v for k, v in state.items() if not k.startswith("_") and k not in _SCHEDULER_PROGRESS
        }
    return json.loads(json.dumps(settings, default=str))  # plain types: weights_only loads them back


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
    min_delta: float = 0.0,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    checkpoint: str | os.PathLike | None = None,
    amp: bool = False,
    progress: bool = True,
    channels_last: bool = False,
    compile_model: bool = False,
    recipe: Mapping[str, Any] | None = None,
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
        min_delta: the smallest gain of the monitored value that counts as an improvement, for ``patience`` and
            :attr:`History.converged` (the best weights are kept whatever the gain).
        scheduler: stepped once per epoch (``ReduceLROnPlateau`` gets the monitored value).
        checkpoint: file for the latest state and the best weights; if it exists, training resumes from it.
            It records the settings it was written with (architecture, optimizer hyperparameters, scheduler,
            ``monitor``, ``recipe``); resuming with other settings is refused, naming what differs (a larger
            ``epochs`` is allowed: it trains longer).
        amp: mixed precision on a GPU, see :func:`amp_dtype` (ignored on the CPU).
        progress: show a progress bar over epochs.
        channels_last: store the model's weights and 4-D inputs channels-last (faster convolutions on GPUs).
        compile_model: train through ``torch.compile(model)``; falls back to the plain model if that fails.
        recipe: anything else that changes the weights (data seed, augmentation, ...), JSON values; recorded
            in ``checkpoint``.

    Under ``torch.distributed`` (``model`` wrapped in DistributedDataParallel), ``train_loader``'s sampler
    and dataset get ``set_epoch(epoch)`` before each epoch when they have it, ``train_loss`` is averaged over
    all processes, and only rank 0 writes ``checkpoint`` (every rank reads it to resume).

    Returns:
        The :class:`History`; ``model`` holds the best epoch's weights.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    network = _CompiledOrEager(model) if compile_model else model
    dtype = amp_dtype(device) if amp else None
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)  # float16 gradients underflow
    rank, world = _rank_and_world()
    history = History(monitor=monitor, min_delta=min_delta)
    best_state: dict[str, torch.Tensor] | None = None
    start = 1
    path = Path(checkpoint) if checkpoint is not None else None
    settings = _fit_settings(model, optimizer, scheduler, monitor, recipe)
    if path is not None and path.is_file():
        saved = load_checkpoint(path, device)
        differences = _differences(saved.get("settings", {}), settings)
        if differences:
            raise ValueError(
                f"{path} was written by a run with other settings, so it cannot be resumed:\n  "
                + "\n  ".join(differences) + "\nDelete it to start afresh, or run with the settings it records."
            )  # fmt: skip
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None and saved.get("scheduler") is not None:
            scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler") is not None:
            scaler.load_state_dict(saved["scaler"])
        history, best_state = History(**saved["history"] | {"min_delta": min_delta}), saved["best_state"]
        start = history.records[-1]["epoch"] + 1 if history.records else 1
        print(f"resuming from {path} after epoch {start - 1}")
    if history.stopped_early:
        epochs = start - 1  # the saved run had stopped early: there is nothing left to train
    minimise = monitor.endswith("loss")
    waited = start - 1 - history.improved_epoch if history.records else 0
    bar = tqdm(range(start, epochs + 1), desc="epochs", disable=not progress, leave=True)
    for epoch in bar:
        started = time.perf_counter()
        model.train()
        for part in (getattr(train_loader, "sampler", None), getattr(train_loader, "dataset", None)):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)  # e.g. DistributedSampler: a new shuffle each epoch, the same on every rank
        totals = torch.zeros(2, device=device)  # loss sum, sample count
        for batch in train_loader:
            args, y = _to(split_batch(batch, inputs, target), device, channels_last)
            with autocast(device, amp, scaled=True):
                loss = loss_fn(network(*args), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            size = _batch_size(y)
            totals[0] += loss.detach().float() * size  # stays on the device: no sync per batch
            totals[1] += size
        if world > 1:
            torch.distributed.all_reduce(totals)
        total_loss, count = totals.tolist()
        if count == 0:
            raise ValueError("the training loader is empty")
        if not math.isfinite(total_loss):
            raise FloatingPointError(
                f"the training loss became {total_loss} in epoch {epoch}: the training diverged. Lower the learning "
                "rate (try a tenth of it), or add gradient clipping; check the inputs are normalised and finite."
            )
        val = evaluate(
            network, val_loader, loss_fn, device, inputs=inputs, target=target,
            num_classes=num_classes, ignore_index=ignore_index, amp=amp, channels_last=channels_last,
        )  # fmt: skip
        record = {"epoch": epoch, "train_loss": total_loss / count, "lr": optimizer.param_groups[0]["lr"]}
        record.update({f"val_{k}": v for k, v in val.items() if k != "confusion"})
        record["seconds"] = time.perf_counter() - started
        history.records.append(record)
        if monitor not in record:
            raise KeyError(f"monitor {monitor!r} is not in the history columns {sorted(record)}")
        value = record[monitor]
        best = history.best_value
        gain = math.inf if math.isnan(best) else (best - value if minimise else value - best)
        if gain > 0:
            history.best_epoch, history.best_value = epoch, value
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}  # a copy, not a view
        if gain > min_delta:
            history.improved_epoch, waited = epoch, 0
        else:
            waited += 1
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(value)
        elif scheduler is not None:
            scheduler.step()
        history.stopped_early = patience is not None and waited >= patience
        if path is not None and rank == 0:  # saved after the patience check, so a finished run is not resumed
            _save_atomic(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict(),
                    "history": asdict(history),
                    "best_state": best_state,
                    "settings": settings,
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


def load_or_train(
    model: nn.Module,
    path: str | os.PathLike,
    train: Callable[[nn.Module], Any],
    recipe: Mapping[str, Any] | None = None,
) -> bool:
    """Load ``model``'s weights from ``path`` if the file exists; otherwise ``train(model)`` and save them.

    With ``recipe`` (every setting that changes the weights: hyperparameters, data and training seeds, the key
    of an upstream checkpoint) the file is :func:`keyed_path` ``(path, recipe)`` and records the recipe: a
    changed setting trains anew instead of silently loading another recipe's weights. Prints which happened.

    Returns:
        ``True`` when the weights were loaded, ``False`` when the model was trained now.

    Raises:
        ValueError: when the file is damaged, or records another recipe than its name says.
        RuntimeError: when its weights do not fit ``model`` (another architecture).
    """
    path = Path(path) if recipe is None else keyed_path(path, recipe)
    if path.is_file():
        saved = load_checkpoint(path)
        state = saved["state_dict"] if "state_dict" in saved else saved
        differences = _differences(saved.get("recipe", {}), versioned_recipe(recipe)) if recipe is not None else []
        if differences:
            raise ValueError(f"{path} records another recipe than its key says; delete it to retrain:\n  "
                             + "\n  ".join(differences))  # fmt: skip
        _refuse_non_finite(state, f"{path} holds weights that are not finite numbers (a training that diverged); "
                           "delete the file to retrain, with a lower learning rate")  # fmt: skip
        try:
            model.load_state_dict(state)
        except RuntimeError as error:
            raise RuntimeError(
                f"{path} does not fit this model (was the architecture changed?); delete the file to retrain."
            ) from error
        print(f"loaded (same recipe): {path.name}" if recipe is not None else f"loaded trained weights from {path}")
        return True
    train(model)
    save_weights(model.state_dict(), path, recipe)
    print(f"trained now, saved to {path}")
    return False


def save_weights(state: Mapping[str, torch.Tensor], path: str | os.PathLike, recipe: Mapping[str, Any] | None) -> None:
    """Write trained weights with the recipe that made them, in the file format :func:`load_or_train` reads.

    Raises:
        FloatingPointError: when a weight is NaN or infinite (a diverged training): nothing is written.
    """
    _refuse_non_finite(state, f"not saving {Path(path).name}: its weights are not finite numbers (the training "
                       "diverged); lower the learning rate and train again")  # fmt: skip
    recipe = versioned_recipe(recipe) if recipe is not None else {}
    payload = {"state_dict": {k: v.cpu() for k, v in state.items()}, "recipe": json.loads(_plain(recipe))}
    _save_atomic(payload, Path(path))


def _refuse_non_finite(state: Mapping[str, Any], message: str) -> None:
    """Raise ``FloatingPointError(message)``, naming the first tensor, if any floating tensor holds NaN or inf."""
    for name, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            raise FloatingPointError(f"{message} (first bad tensor: {name})")
