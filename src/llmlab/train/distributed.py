"""Scale-out on PyTorch's own engines: DDP (replicate, all-reduce gradients) or FSDP2 (`fully_shard`).

`torchrun --nproc_per_node=N -m llmlab train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; a plain run has
none of them and trains in one process. Gloo carries CPU runs, NCCL GPU runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from llmlab.train import hardware


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment; a no-op for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def setup_process(config, info: DistInfo | None = None) -> tuple[torch.device, DistInfo]:
    """The device, process group and CPU thread count of a training run (`config` is a TrainConfig).

    Every stage sets its process up here, once, before it builds a model: under torchrun each process
    takes the GPU of its LOCAL_RANK.
    """
    device = hardware.resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    info = info or init_distributed(device.type)
    if config.threads:
        torch.set_num_threads(config.threads)
    return device, info


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: nn.Module, strategy: str, info: DistInfo, device: torch.device) -> nn.Module:
    """DDP or FSDP2 around `model` when there are several processes; the model itself otherwise."""
    if not info.enabled:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # Shard each block, then the root (embeddings, final norm, head) — the FSDP2 recipe.
        for block in getattr(model, "blocks", []):
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The GPT inside a DDP wrapper (FSDP2 modifies the module in place and needs no unwrapping)."""
    return getattr(model, "module", model)


def mean_across(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The average of a tensor over all processes (losses for logging)."""
    if info.enabled:
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world
    return value


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
