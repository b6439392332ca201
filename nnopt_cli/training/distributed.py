"""Data-parallel training over processes started by torchrun (PyTorch DistributedDataParallel).

    torchrun --nproc_per_node=N -m nnopt_cli train <overrides>

torchrun starts N copies of `nnopt train` and gives each RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT. `init_from_env` joins them in one process group: gloo carries CPU
tensors, nccl carries CUDA tensors, and each process drives GPU LOCAL_RANK. The runner then
splits every global batch across the ranks (`epoch_batches`), wraps the model in DDP (`wrap`)
and sums its metric counters over the ranks (`sum_over_ranks`); only rank 0 writes.
Post-training stages are single-process work: after training the ranks part (`leave_to_rank0`)
and rank 0 runs them alone.

Without torchrun (no WORLD_SIZE, or WORLD_SIZE=1) every function here answers for a single
process and costs nothing: the runner's single-process path makes no collective calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from nnopt_cli.errors import ConfigError
from nnopt_cli.training.launch import launched_by_torchrun, local_rank


def init_from_env(timeout_s: float = 1800) -> None:
    """Join the process group torchrun describes in the environment (no-op without torchrun)."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    local = local_rank()
    cuda = torch.cuda.is_available() and dist.is_nccl_available()
    if cuda and local < torch.cuda.device_count():
        torch.cuda.set_device(local)  # one GPU per process; nccl binds to the current device
    # one group, two transports: the backend is picked by the tensor's device
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))


def _barrier() -> None:
    # an all-reduce of a CPU tensor goes over gloo even when nccl is in the group too
    # (dist.barrier() would guess a GPU there)
    dist.all_reduce(torch.zeros(1))


def shutdown(wait_for_peers: bool = False) -> None:
    """Leave the process group. After a run that ended normally on every rank, first wait for the
    peers (`_barrier`), so no rank tears its connections down while a peer still has an
    operation in flight on them (a gloo thread then dies with "terminate called without an
    active exception"). After an error the ranks may
    be at different collectives, so leave at once and let torchrun stop the others."""
    if dist.is_available() and dist.is_initialized():
        try:
            if wait_for_peers:
                _barrier()
        finally:
            dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_rank0() -> bool:
    """The process that writes the run folder, the logs and the progress bar."""
    return rank() == 0


def device_for(device: torch.device) -> torch.device:
    """The device this process trains on: under DDP a CUDA run takes GPU LOCAL_RANK."""
    if world_size() == 1 or device.type != "cuda":
        return device
    if device.index is not None:
        raise ConfigError("device", str(device), "under torchrun every process uses GPU LOCAL_RANK: "
                                                 "use device=cuda or device=auto")
    count = torch.cuda.device_count()
    if local_rank() >= count:
        raise ConfigError("device", "cuda", f"torchrun started process LOCAL_RANK={local_rank()} but this "
                                            f"node has {count} GPU(s): use --nproc_per_node <= {count}")
    return torch.device("cuda", local_rank())


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """The module to train: DDP around `model` across the ranks, or `model` itself alone.

    DDP broadcasts rank 0's weights at construction and averages gradients during backward;
    `model` keeps the plain parameter names, so save and evaluate it, not the wrapper.
    """
    if world_size() == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def epoch_batches(n: int, sizes: list[int], generator: torch.Generator,
                  rank: int = 0, world_size: int = 1) -> Iterator[tuple[int, torch.Tensor]]:
    """(global batch size, this rank's indices) for each step of one epoch over `n` samples.

    The epoch's order is one permutation drawn from `generator`; seeded alike on every rank, it
    is the same permutation everywhere, so the ranks need not talk. Each global batch of that
    order is split rank-strided (rank r takes positions r, r + world_size, ...): the ranks see
    disjoint shards that together cover every sample once per epoch, and a new order (and so a
    new shard) every epoch. With world_size=1 this is plain shuffled batching.
    """
    perm = torch.randperm(n, device=generator.device, generator=generator)
    pos = 0
    for bs in sizes:
        idx = perm[pos:pos + bs]
        pos += bs
        yield bs, (idx if world_size == 1 else idx[rank::world_size])


def sum_over_ranks(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor summed over all ranks (one all-reduce, in float64 so counts stay exact)."""
    if world_size() == 1:
        return list(tensors)
    flat = torch.stack([t.detach().to(torch.float64).reshape(()) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    return list(flat.unbind())


def sum_tensor_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """A tensor of counts summed element-wise over all ranks (one all-reduce)."""
    if world_size() == 1:
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def leave_to_rank0() -> bool:
    """End the process group once every rank gets here; True on rank 0, which goes on alone.

    For single-process work after DDP training (post-training stages): with no group left,
    rank 0's code sees world_size() == 1, so it wraps no DDP and makes no collective call, and no
    collective timeout can fire however long the work takes. The other ranks just finish.
    """
    if world_size() == 1:
        return True
    alone = is_rank0()  # rank() reads 0 everywhere once the group is gone
    _barrier()  # if it raises, the group is kept and the ranks stay what they are
    dist.destroy_process_group()
    return alone


def broadcast_from_rank0(obj):
    """Rank 0's `obj` on every rank (any picklable value)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sweep_device(spec: str, job_num: int) -> str:
    """Device of job `job_num` in a parallel sweep on one machine: round-robin over its GPUs.

    Several jobs at once on a multi-GPU machine (hydra/launcher=joblib) would all land on
    cuda:0; job k takes cuda:(k mod GPUs) instead. Explicit cuda:N and cpu are kept.
    """
    if spec not in ("auto", "cuda") or not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return spec
    return f"cuda:{job_num % torch.cuda.device_count()}"


class _Rank0Writes:
    """The run folder as seen by ranks other than 0: reads pass through to the real RunDir,
    writing methods (write_*, append_*, save_*, remove_*) do nothing, so rank 0 alone writes the folder."""

    _WRITES = ("write_", "append_", "save_", "remove_")

    def __init__(self, run):
        self._run = run

    def __getattr__(self, name: str):
        if name.startswith(self._WRITES):
            return lambda *args, **kwargs: None
        return getattr(self._run, name)


def rank0_writes(run):
    """`run` on rank 0; elsewhere a view of it whose writing methods are no-ops."""
    return run if is_rank0() else _Rank0Writes(run)
