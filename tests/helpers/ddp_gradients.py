"""Run by ``torchrun --nproc_per_node=2``: one float64 forward/backward of the DDP field U-Net, gradients to a file.

Each process takes its half of the same global batch (``batch(4)``); DistributedDataParallel averages the
gradients and the synchronised batch norm pools its statistics, so rank 0's gradients must equal those of one
process on the whole batch (tests/test_train_fields.py computes those and compares).
"""

from __future__ import annotations

import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from course_utils.models.unet import UNet
from course_utils.train_fields import synchronise_batch_norm


def model() -> UNet:
    """The same float64 U-Net in every process."""
    torch.manual_seed(0)
    return UNet(4, 3, width=8).double()


def batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch: images ``[size, 4, 32, 32]`` and masks ``[size, 32, 32]``."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(size, 4, 32, 32, generator=generator, dtype=torch.float64)
    return images, torch.randint(0, 3, (size, 32, 32), generator=generator)


def gradients(network: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Parameter gradients of the mean cross-entropy of one training-mode step."""
    network.train()
    torch.nn.functional.cross_entropy(network(images), masks).backward()
    return {name.removeprefix("module."): p.grad.clone() for name, p in network.named_parameters()}


if __name__ == "__main__":
    torch.distributed.init_process_group("gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    images, masks = batch(4)
    share = slice(rank * 4 // world, (rank + 1) * 4 // world)
    network = DistributedDataParallel(synchronise_batch_norm(model(), torch.device("cpu")))
    grads = gradients(network, images[share], masks[share])
    if rank == 0:
        torch.save(grads, sys.argv[1])
    torch.distributed.barrier()  # leave together: a rank that exits while its peer still talks aborts gloo
    torch.distributed.destroy_process_group()
