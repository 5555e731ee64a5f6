"""Scaling the trainer out: one process per device under torchrun.

- `init()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) or a
  file:// init method, picks nccl on CUDA and gloo on CPU; without that environment it is a
  single process and nothing is initialised.
- Data: every process walks the same deterministic order of micro-batches and takes its own
  slice of each global batch (rank r takes micro-batches r*A .. r*A+A-1 of A per process), the
  sharding DistributedSampler does, keyed by step so a resumed run continues the same order.
- `wrap()`: DDP (find_unused_parameters, since the last VLM layer's MLP and the final norm feed
  no loss) or FSDP for the 4.7B full fine-tune, sharded per decoder layer (Qwen3-VL text and
  vision blocks, DiT layers) and at the root.
- Checkpoints hold whole tensors whatever the strategy: under FSDP every rank takes part in
  gathering the model and the optimizer state (`full_state`, `optimizer_state`), and a resume
  scatters them again (`load_full_state`, `load_optimizer_state`), so a run saved by one
  process resumes on several and back.
- Only rank 0 writes checkpoints, the event log and the runs table.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init(device: str | None = None, init_method: str | None = None, rank: int | None = None,
         world_size: int | None = None) -> DistInfo:
    """Join the process group torchrun (or the caller) describes; a lone process returns rank 0
    of 1 on `device` (default: CUDA if present, else CPU)."""
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    want = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if want.startswith("cuda"):
        dev = torch.device("cuda", local_rank if world_size > 1 else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    else:
        dev = torch.device(want)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=init_method or "env://", rank=rank,
                                world_size=world_size)
    return DistInfo(rank, world_size, local_rank, dev)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_flag(info: DistInfo, flag: bool) -> bool:
    """True on every rank if any rank's flag is True (a cancel seen by one process stops all)."""
    if not info.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def decoder_layer_classes(model: nn.Module) -> tuple[type, ...]:
    """The per-layer blocks FSDP shards one by one."""
    names = {"Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock", "DiTLayer"}
    return tuple({type(m) for m in model.modules() if type(m).__name__ in names})


def wrap(module: nn.Module, info: DistInfo, strategy: str = "ddp") -> nn.Module:
    """The module as its processes train it: itself alone, DDP, or FSDP per decoder layer."""
    if not info.distributed:
        return module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DDP(module, device_ids=ids, find_unused_parameters=True)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        layers = decoder_layer_classes(module)
        blocks = [m for m in module.modules() if isinstance(m, layers)]
        text = [m for m in blocks if type(m).__name__ == "Qwen3VLTextDecoderLayer"]
        for m in blocks:
            # The last text layer's output feeds no loss (only Choice Policies read the final
            # hidden states) while its keys and values feed the action expert through the KV
            # cache. FSDP gathers a layer's weights for backward when the gradient reaches the
            # layer's output, which never happens there: that layer keeps its gathered weights
            # from forward through backward instead of resharding them.
            fully_shard(m, reshard_after_forward=not (text and m is text[-1]))
        fully_shard(module)
        return module
    raise ValueError(f"unknown distributed strategy {strategy!r}: use 'ddp' or 'fsdp'")


def is_sharded(module: nn.Module) -> bool:
    return any(type(p).__name__ == "DTensor" for p in module.parameters())


@contextmanager
def gathered(root: nn.Module):
    """A block in which the root's own (not per-layer) weights are whole, for calls that bypass
    its forward (validation calls the model's prefill and sampling directly); each sharded layer
    still gathers its weights in its own forward. Every rank must enter it. A no-op unless the
    root is an FSDP module."""
    if not hasattr(root, "unshard") or not is_sharded(root):
        yield
        return
    root.unshard()
    try:
        yield
    finally:
        root.reshard()


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kw)


def full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's whole state on the CPU, gathered from the shards under FSDP (every rank must
    call it then)."""
    if is_sharded(module):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(module, options=_options(full_state_dict=True,
                                                             cpu_offload=True))
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def load_full_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load whole tensors (any subset of the module's state) into the module, each rank keeping
    its shard under FSDP."""
    if is_sharded(module):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(module, state, options=_options(full_state_dict=True, strict=False))
    else:
        module.load_state_dict(state, strict=False)


def optimizer_state(root: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state keyed by parameter names, whole tensors on the CPU (gathered under
    FSDP; every rank must call it then). The same form for every strategy."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(root, optimizer, options=_options(
        full_state_dict=True, cpu_offload=is_sharded(root)))


def load_optimizer_state(root: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Inverse of optimizer_state; also takes the integer-keyed `optimizer.state_dict()` form."""
    if any(isinstance(i, int) for group in state["param_groups"] for i in group["params"]):
        optimizer.load_state_dict(state)
        # a parameter that changed shape but not size (a scalar that became a 1-vector)
        for p, st in optimizer.state.items():
            for k, v in st.items():
                if k != "step" and torch.is_tensor(v) and v.shape != p.shape \
                        and v.numel() == p.numel():
                    st[k] = v.reshape(p.shape)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    # not strict: a parameter that never had a gradient (the last text layer's MLP when nothing
    # reads the final hidden states) has no state
    set_optimizer_state_dict(root, optimizer, state,
                             options=_options(full_state_dict=True, strict=False))
