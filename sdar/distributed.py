"""Multi-process training: torchrun + FSDP2, the few collectives the loop needs, world-size-free
checkpoints.

    torchrun --nproc_per_node=2 -m sdar train --run-dir runs/hh-2p ...    # gloo on CPU, nccl on CUDA
    python -m sdar train ...                                             # one process: nothing here runs

What runs where (``WORLD_SIZE`` > 1):

- **Policy**: sharded with FSDP2 (``fully_shard`` on every transformer block, then on the inner
  model — the root the loop calls; a tied LM head shares the embedding's shards, an untied one joins
  the root group); the optimizer holds the shards. Only the loss forward/backward runs on the sharded
  model.
- **Rollout copy**: every rank also keeps a plain (unsharded) copy of the policy, refreshed from the
  gathered full state dict after each update. The hf engine generates with it and the θ_old pre-pass
  (old log-probs, teacher hidden states) runs on it: generation stops at different turns on different
  ranks, and a plain copy needs no collective per forward. Cost: one extra copy of the weights per rank
  (the design targets the small CPU models; on GPUs use vLLM, whose weights are pushed the same way).
- **Reference model**: replicated (a plain frozen copy per rank; it only runs in the pre-pass).
- **Batch**: ``rollout_split="split"`` (default) — task seeds are drawn identically on every rank from
  the step seed and rank r plays tasks ``r, r + W, ...`` (whole groups per rank);
  ``"replicate"`` — every rank plays the whole batch (identical to a single process: same weights, same
  seeds) and trains on samples ``r, r + W, ...`` — W× the generation, for equivalence checks.
  Group statistics are computed from the all-gathered (group, reward) pairs, so a group spread over
  ranks gets the advantages it gets on one process.
- **Loss**: every micro-batch is scaled by its share of the GLOBAL mini-batch token (or sequence) count
  and by W, because FSDP's reduce-scatter averages over ranks: Σ_ranks of the gradients equals the
  single-process gradient. Ranks pad their micro-batch count with zero-weighted passes so every rank
  runs the same number of FSDP forward/backward collectives.
- **Checkpoints**: the model is the plain copy (the gathered full state, ``model.safetensors`` as on one
  process); the optimizer state is gathered with ``get_optimizer_state_dict(full_state_dict=True)`` and
  stored in the single-process layout (integer parameter ids), so any world size resumes any other.
  Rank 0 writes the checkpoint, metrics, config and final model.

Limits: no LoRA; ``tensor_parallel_size`` > 1 (vLLM) is for single-process training; rank 0 alone
evaluates; ``engine_mismatch`` is rank 0's.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _launched_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: torch.device) -> bool:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 (gloo on CPU, nccl on CUDA); returns
    whether the run is distributed."""
    if not _launched_distributed():
        return False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def local_device(device: torch.device) -> torch.device:
    if device.type == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2: ``fully_shard`` each transformer block, then the root (in place; returns ``model``).

    The loop runs the inner model (hidden states) and reads the head weight itself, never the CausalLM
    forward, so the inner model is the FSDP root and the LM head is made part of its group: after a
    forward the root group stays unsharded, so :func:`head_weight` read after the forward is the full
    head weight, and its gradient is reduce-scattered with the rest in the root's post-backward.

    - tied head (Qwen3 ≤ 4B, the embedded model): re-pointed at the sharded embedding, so the
      optimizer sees one parameter; the full weight is the embedding's.
    - untied head (Qwen3 ≥ 8B): its parameter joins the root group. ``fully_shard`` takes a group's
      parameters from the module tree at the call, so the head is registered under the inner model
      for the call only; FSDP keeps swapping ``lm_head.weight`` (sharded ↔ full) on the head module
      itself, and the parameter names stay the single-process ones (``lm_head.weight``)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dev = next(model.parameters()).device
    mesh = init_device_mesh(dev.type, (world_size(),))
    inner = _inner(model)
    tied = _tied(inner)
    for block in inner.model.layers:
        fully_shard(block, mesh=mesh)
    if tied:
        fully_shard(inner.model, mesh=mesh)
        inner.lm_head.weight = inner.model.embed_tokens.weight
    else:
        inner.model.add_module(_HEAD_IN_ROOT, inner.lm_head)
        try:
            fully_shard(inner.model, mesh=mesh)
        finally:
            delattr(inner.model, _HEAD_IN_ROOT)
    inner.sdar_tied_head = tied  # read by head_weight: after a forward the tied pair is no longer one tensor
    return model


_HEAD_IN_ROOT = "sdar_lm_head"  # the untied head's name under the root while the root group is formed


def _inner(model) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _tied(inner) -> bool:
    return inner.lm_head.weight is inner.model.embed_tokens.weight


def head_weight(model) -> torch.Tensor:
    """The LM-head weight of a model sharded by :func:`shard`; full (unsharded) after a forward of the
    root: the embedding's for a tied head, ``lm_head.weight`` for an untied one."""
    inner = _inner(model)
    return inner.model.embed_tokens.weight if inner.sdar_tied_head else inner.lm_head.weight


def full_state(model: torch.nn.Module) -> dict:
    """The gathered full model state dict on every rank (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


@torch.no_grad()
def sync_copy(model: torch.nn.Module, copy: torch.nn.Module) -> None:
    """Load the sharded ``model``'s full weights into the plain ``copy`` (a collective)."""
    copy.load_state_dict(full_state(model), strict=False)


def load_full_state(model: torch.nn.Module, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def _trainable_names(model) -> dict[str, int]:
    """Name → position of each trainable parameter in ``model.parameters()`` order (the order the
    optimizer was built in); a tied parameter answers to each of its names."""
    order = {id(p): i for i, p in enumerate(p for p in model.parameters() if p.requires_grad)}
    return {n: order[id(p)] for n, p in model.named_parameters(remove_duplicate=False) if id(p) in order}


def full_optimizer_state(model, optimizer) -> dict:
    """The gathered optimizer state in the single-process layout (``optimizer.state_dict()`` of a
    plain model: parameters numbered in ``model.parameters()`` order). A collective; full on rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    osd = get_optimizer_state_dict(model, optimizer,
                                   options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return fqn_to_index(osd, _trainable_names(model)) if rank() == 0 else {}


def load_optimizer_state(model, optimizer, state: dict) -> None:
    """Load a single-process-layout optimizer state into the sharded model's optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    pos = _trainable_names(model)
    names = {}
    for n, i in pos.items():
        names.setdefault(i, n)  # first name of each parameter, as named_parameters() lists it
    set_optimizer_state_dict(model, optimizer, index_to_fqn(state, names),
                             options=StateDictOptions(full_state_dict=True))


def fqn_to_index(osd: dict, pos: dict[str, int]) -> dict:
    """Optimizer state keyed by parameter names → keyed by parameter position (plain layout)."""
    groups = [{**g, "params": [pos[n] for n in g["params"]]} for g in osd["param_groups"]]
    return {"state": {pos[n]: s for n, s in osd["state"].items()}, "param_groups": groups}


def index_to_fqn(osd: dict, names: dict[int, str]) -> dict:
    """Inverse of :func:`fqn_to_index` (``names``: position → name)."""
    groups = [{**g, "params": [names[int(i)] for i in g["params"]]} for g in osd["param_groups"]]
    return {"state": {names[int(i)]: s for i, s in osd["state"].items()}, "param_groups": groups}


def load_checkpoint(path: str, *, model, optimizer, copy) -> dict:
    """Resume a sharded run from a checkpoint of any world size: weights into the plain ``copy`` and
    from it into the shards, the optimizer state into the sharded optimizer, RNG; returns state.json."""
    from sdar import checkpoint

    state = checkpoint.load_checkpoint(path, model=copy, optimizer=None)
    load_full_state(model, copy.state_dict())
    load_optimizer_state(model, optimizer, torch.load(os.path.join(path, "optimizer.pt"), weights_only=False))
    return state


# ----------------------------------------------------------------------------- small collectives
def all_gather_objects(obj) -> list:
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def global_sum(*values: float) -> list[float]:
    """Σ over ranks of each value (float64)."""
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def global_max(value: int) -> int:
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)


def reduce_metric_sums(sums: dict, count: float, *, replicated: tuple[str, ...] = ()) -> tuple[dict, float]:
    """Σ over ranks of token-weighted metric sums and of the token count; ``replicated`` keys hold the
    same value on every rank (e.g. the global grad norm) and are kept as they are."""
    keys = sorted(k for k in sums if k not in replicated)
    *vals, total = global_sum(*[sums[k] for k in keys], count)
    return {**sums, **dict(zip(keys, vals))}, total


@dataclass
class EpisodeStats:
    """What the logged episode metrics need of an episode (gathered from every rank)."""

    won: bool
    score: float
    reward: float
    turns: int
    invalid_turns: int


def gather_episodes(episodes: list) -> list[EpisodeStats]:
    mine = [EpisodeStats(e.won, e.score, e.reward, e.turns, e.invalid_turns) for e in episodes]
    return [e for part in all_gather_objects(mine) for e in part]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def close() -> None:
    """Tear the process group down once every rank is done with it: without the barrier a rank that finishes
    first can destroy its gloo pairs while a peer's last collective still uses them (rank aborts with
    "terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def exit_distributed_process() -> None:
    """After :func:`close`, end a process that torchrun launched (``WORLD_SIZE`` > 1) without interpreter
    finalization; a no-op otherwise. During finalization a gloo worker thread can release a finished collective
    holding FSDP's all-gathered tensors; that needs the GIL, and the thread is then ended through a noexcept
    destructor: "terminate called without an active exception", SIGABRT (torch 2.13; a core dump of rank 1:
    ~AsyncBarrierWork -> ~AsyncAllgatherCoalescedWork -> TensorImpl::decref_pyobject -> take_gil -> pthread_exit;
    2 of 5 CI runs and 1 of 58 looped runs of the two-process gradient test, 2026-11)."""
    if not _launched_distributed():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


__all__ = ["EpisodeStats", "all_gather_objects", "barrier", "close", "exit_distributed_process", "fqn_to_index",
           "full_optimizer_state", "full_state", "gather_episodes", "global_max", "global_sum", "head_weight",
           "index_to_fqn", "init_from_env", "load_checkpoint", "load_full_state", "load_optimizer_state",
           "local_device", "rank", "reduce_metric_sums", "shard", "sync_copy", "world_size"]
