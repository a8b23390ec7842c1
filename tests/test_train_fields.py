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

LR = 3e-3  # AdamW's first steps move each weight by about the learning rate
RUN = ["--mode", "smoke", "--epochs", "1", "--batch-size", "4", "--samples-per-epoch", "8", "--width", "8",
       "--lr", str(LR), "--loss", "ce", "--workers", "0"]  # fmt: skip


def weights(path: Path) -> torch.Tensor:
    """All floating-point weights and batch-norm statistics of a saved state dict, as one vector."""
    state = torch.load(path, weights_only=True)
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


def test_two_processes_train_like_one(course_data_dir: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    main([*RUN, "--out", str(one)])  # the single-process run, in this process
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "course_utils.train_fields", *RUN, "--out", str(two)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=180,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "on 2 x cpu, global batch 4 (2 per process)" in result.stdout

    seed_everything(0)
    start = torch.cat([v.ravel() for v in UNet(4, 3, width=8).state_dict().values() if v.is_floating_point()])
    single, double = weights(one), weights(two)
    assert (single - start).abs().mean() > LR / 2  # two optimizer steps did move the weights
    # Without averaged gradients, or with another per-process batch, weights differ by about LR.
    assert (double - single).abs().max() < LR / 10
    histories = [json.loads(path.with_suffix(".history.json").read_text()) for path in (one, two)]
    assert histories[0]["records"][0]["train_loss"] == pytest.approx(histories[1]["records"][0]["train_loss"], rel=1e-4)
    with pytest.raises(FileExistsError, match="delete it"):
        main([*RUN, "--out", str(one)])
