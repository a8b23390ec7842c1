"""course_utils.train_fields: one process and two DDP processes (gloo) with the same global batch agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from course_utils.config import seed_everything
from course_utils.data.fields import FieldChipDataset
from course_utils.models.unet import UNet
from course_utils.train_fields import SeededAugmentation, main

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
import ddp_gradients  # noqa: E402  (tests/helpers: the script torchrun runs)

LR = 3e-3  # AdamW's first steps move each weight by about the learning rate
RUN = ["--mode", "smoke", "--epochs", "1", "--batch-size", "4", "--samples-per-epoch", "8", "--width", "8",
       "--lr", str(LR), "--loss", "ce", "--workers", "0"]  # fmt: skip


def weights(path: Path) -> torch.Tensor:
    """All floating-point weights and batch-norm statistics of a saved state dict, as one vector."""
    state = torch.load(path, weights_only=True)["state_dict"]
    return torch.cat([value.ravel() for value in state.values() if value.is_floating_point()])


def test_augmentation_depends_on_seed_epoch_and_index_only(course_data_dir: Path) -> None:
    chips = FieldChipDataset("train", "smallholder", "smoke")
    augmented = SeededAugmentation(chips, crop=64, length=10, seed=0)
    first = augmented[7]["image"]
    torch.manual_seed(123)  # the process's random state plays no part
    assert torch.equal(augmented[7]["image"], first) and first.shape == (4, 64, 64)
    augmented.set_epoch(1)
    assert not torch.equal(augmented[7]["image"], first)
    assert len(augmented) == 10 and augmented[7]["id"] == chips[7 % len(chips)]["id"]


def torchrun(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``args`` under ``torchrun --standalone --nproc_per_node=2`` (gloo, one thread each)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_processes_compute_the_one_process_gradient(tmp_path: Path) -> None:
    """What DDP guarantees, in float64: two processes with half the batch each give one process's gradient.

    In float64 rounding is ~1e-16 relative, so the bound 1e-9 says nothing about a machine's BLAS; the two
    mistakes it must catch (unaveraged gradients, batch norm over each process's half) are off by ~10 %.
    """
    torchrun(str(Path(__file__).parent / "helpers" / "ddp_gradients.py"), str(tmp_path / "grads.pt"))
    double = torch.load(tmp_path / "grads.pt", weights_only=True)
    images, masks = ddp_gradients.batch(4)
    single = ddp_gradients.gradients(ddp_gradients.model(), images, masks)
    half = ddp_gradients.gradients(ddp_gradients.model(), images[:2], masks[:2])  # one process, unaveraged

    def relative_error(grads: dict[str, torch.Tensor]) -> float:
        return max(float((grads[k] - single[k]).abs().max() / single[k].abs().max()) for k in single)

    assert relative_error(double) < 1e-9
    assert relative_error(half) > 1e-2  # the comparison can fail: one process's half is far from the whole


def test_two_processes_train_like_one(course_data_dir: Path, tmp_path: Path) -> None:
    """The command line end to end: the DDP run's first-epoch loss and weights match the one-process run.

    AdamW's first step moves each weight by about +-LR, the sign of its gradient, so a weight whose gradient
    is near zero may flip under rounding on another CPU: bound the *typical* difference (the median), not the
    largest. A wrong gradient or another per-process batch moves most weights differently (median ~LR).
    """
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    main([*RUN, "--out", str(one)])  # the single-process run, in this process
    result = torchrun("-m", "course_utils.train_fields", *RUN, "--out", str(two))
    assert "on 2 x cpu, global batch 4 (2 per process)" in result.stdout

    seed_everything(0)
    start = torch.cat([v.ravel() for v in UNet(4, 3, width=8).state_dict().values() if v.is_floating_point()])
    single, double = weights(one), weights(two)
    assert (single - start).abs().median() > LR / 2  # two optimizer steps did move the weights
    assert (double - single).abs().median() < LR / 100
    histories = [json.loads(path.with_suffix(".history.json").read_text()) for path in (one, two)]
    assert histories[0]["records"][0]["train_loss"] == pytest.approx(histories[1]["records"][0]["train_loss"], rel=1e-4)
    with pytest.raises(FileExistsError, match="delete it"):
        main([*RUN, "--out", str(one)])
