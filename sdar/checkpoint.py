"""Atomic checkpoints: model (safetensors), optimizer, RNG states, step, config, metrics offset.

Layout: ``RUN_DIR/checkpoints/step_000010/{model.safetensors, optimizer.pt, rng.pt, state.json}``.
A checkpoint is written into a temporary sibling directory, fsynced, then renamed into place
(``os.replace`` of a directory is atomic on POSIX), and only then does ``LATEST`` (itself replaced
atomically) point at it. A ``kill -9`` at any instant leaves either the previous checkpoint or the
new one — never a half-written one. ``state.json`` records the byte length of ``metrics.jsonl`` at
the checkpoint, so a resumed run truncates the metrics file there and rewrites the lost steps: no
gaps, no duplicates.
"""
from __future__ import annotations

import json
import os
import random
import shutil

import numpy as np
import torch
from safetensors.torch import load_model, save_model

LATEST = "LATEST"


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_file_atomic(path: str, text: str) -> None:
    """``path`` holds ``text`` or what it held before, never a mix; concurrent writers (one temporary name per
    process) do not collide."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str, *, step: int, model, optimizer, config: dict, metrics_offset: int,
                    extra: dict | None = None, keep: int = 1, optimizer_state: dict | None = None) -> str:
    """Write checkpoint ``step`` atomically; returns its directory. Keeps the newest ``keep``.
    ``optimizer_state`` (a sharded run's gathered state, :mod:`sdar.distributed`) replaces
    ``optimizer.state_dict()``."""
    root = os.path.join(run_dir, "checkpoints")
    os.makedirs(root, exist_ok=True)
    name = f"step_{step:06d}"
    final = os.path.join(root, name)
    tmp = os.path.join(root, f".tmp-{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_model(model, os.path.join(tmp, "model.safetensors"))
    opt_state = optimizer.state_dict() if optimizer_state is None else optimizer_state
    torch.save(opt_state, os.path.join(tmp, "optimizer.pt"))
    torch.save(rng_state(), os.path.join(tmp, "rng.pt"))
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump({"step": step, "metrics_offset": metrics_offset, "config": config, "extra": extra or {}}, f,
                  indent=2)
    for fname in os.listdir(tmp):
        with open(os.path.join(tmp, fname), "rb") as f:
            os.fsync(f.fileno())
    _fsync_dir(tmp)
    if os.path.exists(final):  # a re-run of this step after a resume: move the old one aside first
        old = os.path.join(root, f".old-{name}-{os.getpid()}")
        os.replace(final, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(root)
    write_file_atomic(os.path.join(root, LATEST), name)
    _prune(root, keep=keep, current=name)
    return final


def _prune(root: str, *, keep: int, current: str) -> None:
    names = sorted(n for n in os.listdir(root) if n.startswith("step_"))
    for n in names[: max(len(names) - max(keep, 1), 0)]:
        if n != current:
            shutil.rmtree(os.path.join(root, n), ignore_errors=True)
    for n in os.listdir(root):  # leftovers of a killed or failed writer (one writer per run dir)
        if n.startswith((".tmp-", ".old-")):
            shutil.rmtree(os.path.join(root, n), ignore_errors=True)


def latest_checkpoint(run_dir: str) -> str | None:
    root = os.path.join(run_dir, "checkpoints")
    pointer = os.path.join(root, LATEST)
    if not os.path.exists(pointer):
        return None
    with open(pointer) as f:
        path = os.path.join(root, f.read().strip())
    return path if os.path.isdir(path) else None


def load_checkpoint(path: str, *, model, optimizer=None, restore_rng: bool = True) -> dict:
    """Load model/optimizer/RNG from checkpoint ``path``; returns its state.json dict."""
    load_model(model, os.path.join(path, "model.safetensors"))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(os.path.join(path, "optimizer.pt"), weights_only=False))
    if restore_rng:
        set_rng_state(torch.load(os.path.join(path, "rng.pt"), weights_only=False))
    with open(os.path.join(path, "state.json")) as f:
        return json.load(f)


def truncate_metrics(path: str, offset: int) -> None:
    """Cut ``metrics.jsonl`` back to the checkpoint's byte length (drops steps done after it)."""
    if os.path.exists(path):
        with open(path, "r+b") as f:
            f.truncate(offset)
            f.flush()
            os.fsync(f.fileno())


__all__ = ["latest_checkpoint", "load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state",
           "truncate_metrics"]
