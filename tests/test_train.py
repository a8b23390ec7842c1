"""course_utils.train: the loop learns, keeps a real copy of the best weights, stops early, resumes."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from course_utils import train
from course_utils.metrics import confusion_matrix
from course_utils.train import (
    History,
    evaluate,
    fit,
    keyed_path,
    load_or_train,
    loader_options,
    recipe_key,
    split_batch,
)

CPU = torch.device("cpu")


def blobs(n: int = 256, seed: int = 0) -> TensorDataset:
    """Two Gaussian blobs in 2-D: linearly separable classes 0 and 1."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=generator)
    x = torch.randn(n, 2, generator=generator) * 0.5 + (y[:, None] * 2.0 - 1.0) * 1.5
    return TensorDataset(x, y)


def loaders() -> tuple[DataLoader, DataLoader]:
    return DataLoader(blobs(256, 0), batch_size=32, shuffle=True), DataLoader(blobs(128, 1), batch_size=64)


def test_fit_learns_a_separable_problem() -> None:
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    train, val = loaders()
    before = evaluate(model, val, nn.CrossEntropyLoss(), CPU, num_classes=2)
    history = fit(
        model, train, val, loss_fn=nn.CrossEntropyLoss(), optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        epochs=5, device=CPU, num_classes=2, monitor="val_accuracy", progress=False,
    )  # fmt: skip
    assert len(history.records) == 5 and history.column("train_loss")[-1] < history.column("train_loss")[0]
    assert history.best["val_accuracy"] > 0.95 and history.best["val_accuracy"] > before["accuracy"]
    assert evaluate(model, val, nn.CrossEntropyLoss(), CPU, num_classes=2)["accuracy"] == history.best_value


def test_best_weights_are_a_copy_and_restored() -> None:
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    train, _ = loaders()
    x, y = blobs(128, 1).tensors
    flipped = DataLoader(TensorDataset(x, 1 - y), batch_size=64)  # the better it trains, the worse it validates
    history = fit(
        model, train, flipped, loss_fn=nn.CrossEntropyLoss(), optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        epochs=4, device=CPU, progress=False,
    )  # fmt: skip
    losses = history.column("val_loss")
    assert history.best_epoch == 1 and losses == sorted(losses) and losses[-1] > losses[0]
    restored = evaluate(model, flipped, nn.CrossEntropyLoss(), CPU)["loss"]
    assert restored == pytest.approx(losses[0], rel=1e-5)  # epoch 1's weights, not the last epoch's


def test_early_stopping_stops() -> None:
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    train, val = loaders()
    history = fit(
        model, train, val, loss_fn=nn.CrossEntropyLoss(), optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
        epochs=10, device=CPU, patience=2, progress=False,
    )  # fmt: skip
    assert history.stopped_early and len(history.records) == 3  # epoch 1 is best, then 2 epochs without gain


def test_resume_from_checkpoint_continues_the_history(tmp_path: Path) -> None:
    path = tmp_path / "run.pt"
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train, val = loaders()
    first = fit(model, train, val, loss_fn=nn.CrossEntropyLoss(), optimizer=optimizer, epochs=2, device=CPU,
                checkpoint=path, progress=False)  # fmt: skip
    assert path.is_file() and not list(tmp_path.glob(".*tmp"))
    resumed = fit(model, train, val, loss_fn=nn.CrossEntropyLoss(), optimizer=optimizer, epochs=4, device=CPU,
                  checkpoint=path, progress=False)  # fmt: skip
    assert [r["epoch"] for r in resumed.records] == [1, 2, 3, 4]
    assert resumed.records[:2] == first.records


def test_a_run_that_stopped_early_is_not_resumed(tmp_path: Path) -> None:
    path = tmp_path / "run.pt"
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    train, val = loaders()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    kwargs = dict(loss_fn=nn.CrossEntropyLoss(), optimizer=optimizer, epochs=10, device=CPU, patience=2,
                  checkpoint=path, progress=False)  # fmt: skip
    first = fit(model, train, val, **kwargs)
    again = fit(model, train, val, **kwargs)
    assert first.stopped_early and again.records == first.records


def test_dict_batches_by_key_and_a_clear_error() -> None:
    batch = {"s2": torch.ones(2, 3), "s1": torch.zeros(2, 1), "label": torch.tensor([0, 1])}
    args, target = split_batch(batch, inputs=("s2", "s1"), target="label")
    assert len(args) == 2 and target.tolist() == [0, 1]
    with pytest.raises(KeyError, match="has no"):
        split_batch(batch, inputs="image", target="label")


def test_load_or_train_trains_once_then_loads(tmp_path: Path) -> None:
    calls = []

    def train(model: nn.Module) -> None:
        calls.append(1)
        with torch.no_grad():
            model.weight.fill_(3.0)

    path = tmp_path / "model.pt"
    assert load_or_train(nn.Linear(2, 2), path, train) is False
    fresh = nn.Linear(2, 2)
    assert load_or_train(fresh, path, train) is True
    assert len(calls) == 1 and torch.all(fresh.weight == 3.0)
    with pytest.raises(RuntimeError, match="delete the file"):
        load_or_train(nn.Linear(3, 2), path, train)


def test_loader_options_fit_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    assert loader_options(CPU) == {"num_workers": 5, "pin_memory": False, "persistent_workers": True}
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun processes share the six cores
    gpu = loader_options(torch.device("cuda"))
    assert gpu["num_workers"] == 2 and gpu["pin_memory"]
    assert loader_options(CPU, num_workers=0) == {"num_workers": 0, "pin_memory": False, "persistent_workers": False}
    with pytest.raises(ValueError, match="num_workers"):
        loader_options(CPU, num_workers=-1)


def test_on_device_confusion_matches_the_metrics_module() -> None:
    generator = torch.Generator().manual_seed(0)
    logits, target = torch.randn(6, 3, 5, 5, generator=generator), torch.randint(0, 4, (6, 5, 5), generator=generator)
    target[target == 3] = 255  # ignored pixels
    loader = [(logits[:4], target[:4]), (logits[4:], target[4:])]
    result = evaluate(nn.Identity(), loader, nn.CrossEntropyLoss(ignore_index=255), CPU, num_classes=3,
                      ignore_index=255)  # fmt: skip
    expected = confusion_matrix(logits.argmax(1), target, 3, ignore_index=255)
    assert np.array_equal(result["confusion"], expected) and result["confusion"].sum() == (target != 255).sum()
    with pytest.raises(ValueError, match="outside the classes"):
        evaluate(nn.Identity(), loader, nn.CrossEntropyLoss(ignore_index=255), CPU, num_classes=3)


class EpochRecorder(torch.utils.data.Sampler):
    """A sequential sampler that records the epochs fit announces through ``set_epoch``."""

    def __init__(self, size: int) -> None:
        self.size, self.epochs = size, []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __iter__(self):
        return iter(range(self.size))

    def __len__(self) -> int:
        return self.size


def test_fast_options_give_the_same_training_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_compile(forward):
        def fails(*args):
            raise RuntimeError("no compiler here")

        return fails

    monkeypatch.setattr(torch, "compile", broken_compile)
    x = torch.randn(16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    weights = []
    for fast in (False, True):
        torch.manual_seed(0)
        model = nn.Conv2d(2, 2, 3, padding=1)
        sampler = EpochRecorder(16)
        train = DataLoader(TensorDataset(x, y), batch_size=4, sampler=sampler)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fit(model, train, DataLoader(TensorDataset(x, y), batch_size=8), loss_fn=nn.CrossEntropyLoss(),
                optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=2, device=CPU, num_classes=2,
                progress=False, amp=fast, channels_last=fast, compile_model=fast)  # fmt: skip
        assert sampler.epochs == [1, 2]
        assert [str(w.message) for w in caught if "torch.compile" in str(w.message)] == (
            ["torch.compile failed (RuntimeError); running the model uncompiled."] if fast else []
        )
        weights.append(model.weight.detach().clone())
    assert model.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(weights[0], weights[1], atol=1e-6)  # AMP is off on the CPU; layouts compute the same


def test_multitask_targets_weight_the_loss_by_samples_not_tasks() -> None:
    model = nn.Linear(2, 2)
    batches = [
        (torch.zeros(1, 2), (torch.zeros(1), torch.zeros(1))),
        (torch.ones(3, 2), (torch.ones(3), torch.ones(3))),
    ]

    def loss_fn(outputs: torch.Tensor, targets: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return targets[0].mean() * 4.0  # 0 for the one-sample batch, 4 for the three-sample batch

    result = evaluate(model, batches, loss_fn, torch.device("cpu"))
    assert result["loss"] == pytest.approx(3.0)  # (1 * 0 + 3 * 4) / 4 samples; per task it would be (0 + 8) / 4 = 2


def test_autocast_uses_float16_only_where_the_loss_is_scaled(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    assert not train.autocast(cpu)._enabled  # no mixed precision on a CPU
    monkeypatch.setattr(train, "amp_dtype", lambda device: torch.float16)  # a GPU without bfloat16
    assert not train.autocast(cpu)._enabled  # an unscaled training loop stays in float32
    scaled = train.autocast(cpu, scaled=True)
    assert scaled._enabled and scaled.fast_dtype == torch.float16
    assert not train.autocast(cpu, amp=False, scaled=True)._enabled


def fit_linear(path: Path, model: nn.Module | None = None, lr: float = 0.1, epochs: int = 2) -> History:
    """Two epochs of SGD on the blobs with a resume checkpoint at ``path``."""
    torch.manual_seed(0)
    model = model or nn.Linear(2, 2)
    train, val = loaders()
    return fit(model, train, val, loss_fn=nn.CrossEntropyLoss(), optimizer=torch.optim.SGD(model.parameters(), lr=lr),
               epochs=epochs, device=CPU, checkpoint=path, progress=False)  # fmt: skip


def test_resuming_with_other_settings_is_refused_naming_the_file_and_the_difference(tmp_path: Path) -> None:
    path = tmp_path / "run.pt"
    fit_linear(path)
    with pytest.raises(ValueError, match=r"run\.pt was written by a run with other settings(.|\n)*lr.*0\.1.*0\.01"):
        fit_linear(path, lr=0.01, epochs=3)
    with pytest.raises(ValueError, match=r"run\.pt(.|\n)*architecture"):
        fit_linear(path, model=nn.Linear(2, 3), epochs=3)
    assert [r["epoch"] for r in fit_linear(path, epochs=3).records] == [1, 2, 3]  # the same settings resume


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", b"not a checkpoint at all"])
def test_a_damaged_checkpoint_names_its_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "run.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"run\.pt is not a readable checkpoint.*Delete it"):
        fit_linear(path)
    with pytest.raises(ValueError, match=r"run\.pt is not a readable checkpoint"):
        load_or_train(nn.Linear(2, 2), path, lambda model: None)


class RunsCode:
    """A pickled object that would run a command when unpickled by ``torch.load(weights_only=False)``."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, ("touch pwned",)


def test_a_crafted_checkpoint_runs_no_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "run.pt"
    torch.save({"model": RunsCode()}, path)
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        fit_linear(path)
    assert not (tmp_path / "pwned").exists()


def test_load_or_train_keys_the_file_by_its_recipe(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trained = []

    def train(model: nn.Module) -> None:
        trained.append(1)
        with torch.no_grad():
            model.weight.fill_(len(trained))

    recipe = {"epochs": 5, "lr": 0.01, "seed": 0}
    assert load_or_train(nn.Linear(2, 2), tmp_path / "m.pt", train, recipe) is False
    assert "trained now" in capsys.readouterr().out
    again = nn.Linear(2, 2)
    assert load_or_train(again, tmp_path / "m.pt", train, dict(recipe)) is True
    assert "loaded (same recipe)" in capsys.readouterr().out and torch.all(again.weight == 1)
    longer = nn.Linear(2, 2)
    assert load_or_train(longer, tmp_path / "m.pt", train, recipe | {"epochs": 6}) is False  # a changed setting
    assert torch.all(longer.weight == 2) and len(list(tmp_path.glob("m-*.pt"))) == 2
    assert keyed_path(tmp_path / "m.pt", recipe) != keyed_path(tmp_path / "m.pt", recipe | {"seed": 1})
    assert recipe_key({"a": 1, "b": 2}) == recipe_key({"b": 2, "a": 1})
    with pytest.raises(TypeError, match="recipe holds"):
        recipe_key({"lr": float("nan")})


def test_history_says_whether_the_run_was_still_improving() -> None:
    improving = History(records=[{"epoch": 1}, {"epoch": 2}], best_epoch=2)
    settled = History(records=[{"epoch": 1}, {"epoch": 2}, {"epoch": 3}], best_epoch=2)
    assert not improving.converged and settled.converged and not History().converged


def test_gains_below_min_delta_keep_the_weights_but_do_not_count_as_improving() -> None:
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    train, val = loaders()
    slow = torch.optim.SGD(model.parameters(), lr=1e-4)  # the validation loss falls a little every epoch
    history = fit(
        model, train, val, loss_fn=nn.CrossEntropyLoss(), optimizer=slow, epochs=8, device=CPU, patience=2,
        min_delta=1.0, progress=False,
    )  # fmt: skip
    losses = history.column("val_loss")
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0]  # every epoch a (tiny) gain
    assert len(losses) == 3 and history.stopped_early  # epoch 1 improves on nothing; 2 and 3 gain < 1.0
    assert history.best_epoch == 3 and history.improved_epoch == 1 and history.converged
    assert evaluate(model, val, nn.CrossEntropyLoss(), CPU)["loss"] == pytest.approx(losses[-1], rel=1e-5)
    strict = History(records=history.records, best_epoch=3, best_value=losses[-1])  # min_delta 0: still improving
    assert not strict.converged


def test_a_diverging_training_stops_with_advice_and_poisons_no_cache(tmp_path: Path) -> None:
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)

    def diverge(model: nn.Module) -> None:  # a regression at far too high a learning rate: the loss overflows
        fit(model, data, data, loss_fn=nn.MSELoss(), optimizer=torch.optim.SGD(model.parameters(), lr=1e3),
            epochs=20, device=CPU, progress=False)  # fmt: skip

    with pytest.raises(FloatingPointError, match="diverged. Lower the learning rate"):
        load_or_train(nn.Linear(2, 1), tmp_path / "m.pt", diverge, {"lr": 1e3})
    assert not list(tmp_path.glob("m*.pt"))  # nothing was written under the recipe's key

    def nan_weights(model: nn.Module) -> None:
        with torch.no_grad():
            model.weight.fill_(float("nan"))

    with pytest.raises(FloatingPointError, match="not finite"):
        load_or_train(nn.Linear(2, 2), tmp_path / "m.pt", nan_weights, {"lr": 0.1})
    assert not list(tmp_path.glob("m*.pt"))
    poisoned = keyed_path(tmp_path / "m.pt", {"lr": 0.1})  # a file an older course version wrote
    nan_state = {"weight": torch.full((2, 2), float("nan")), "bias": torch.zeros(2)}
    torch.save({"state_dict": nan_state, "recipe": train.versioned_recipe({"lr": 0.1})}, poisoned)
    with pytest.raises(FloatingPointError, match="delete the file to retrain"):
        load_or_train(nn.Linear(2, 2), tmp_path / "m.pt", nan_weights, {"lr": 0.1})


def test_checkpoint_keys_change_with_the_data_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = {"epochs": 5, "data_seed": 0}

    def fill(model: nn.Module) -> None:
        with torch.no_grad():
            model.weight.fill_(1.0)

    assert load_or_train(nn.Linear(2, 2), tmp_path / "m.pt", fill, recipe) is False
    before = keyed_path(tmp_path / "m.pt", recipe)
    assert torch.load(before)["recipe"]["data_versions"] == train.DATA_VERSIONS
    monkeypatch.setitem(train.DATA_VERSIONS, "fields", train.DATA_VERSIONS["fields"] + 1)  # the generator changed
    assert keyed_path(tmp_path / "m.pt", recipe) != before
    assert load_or_train(nn.Linear(2, 2), tmp_path / "m.pt", fill, recipe) is False  # trained anew, not reused
