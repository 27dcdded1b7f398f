"""The processes of one lmms-eval run, for work that needs the docs of all of them (retrieval).

lmms-eval shards each task's docs over its processes (``accelerate launch``, ``torchrun``), but a
retrieval gallery needs every image and caption. ``Processes`` wraps the few torch.distributed
collectives used; in one process they return their input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from mmq_eval.errors import MMQConfigError


@dataclass(frozen=True)
class Processes:
    """This process's ``rank`` among ``size``; ``device`` holds the tensors of collectives (NCCL: CUDA)."""

    rank: int = 0
    size: int = 1
    device: str = "cpu"

    @classmethod
    def of(cls, lm) -> Processes:
        """The processes of the lmms-eval model ``lm``; MMQConfigError when they cannot communicate."""
        if lm.world_size > 1 and not (dist.is_available() and dist.is_initialized()):
            raise MMQConfigError(
                f"lmms-eval runs {lm.world_size} processes but torch.distributed has no process group, "
                "so they cannot share a retrieval gallery: start them with accelerate launch or torchrun, "
                "or run in one process"
            )
        return cls(lm.rank, lm.world_size, str(lm.device))

    def gather(self, obj) -> list:
        """``obj`` of every process (picklable), in rank order."""
        if self.size == 1:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """Process 0's ``tensor`` on every process (same shape and dtype everywhere)."""
        if self.size == 1:
            return tensor
        shared = tensor.to(self.device).contiguous()
        dist.broadcast(shared, src=0)
        return shared.to(tensor.device)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of ``tensor`` over the processes, on every process."""
        if self.size == 1:
            return tensor
        total = tensor.to(self.device).contiguous()
        dist.all_reduce(total)
        return total.to(tensor.device)


#: A single process: every collective returns its input.
ONE_PROCESS = Processes()
