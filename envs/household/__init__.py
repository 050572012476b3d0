"""Household environment: ALFWorld's own text engine on locally generated games.

    from envs.household import make
    env = make("train", seed=0, preset="small")
    obs, info = env.reset(seed=3)       # "You are in the middle of a room. ... Your task is to: ..."
    obs, reward, done, info = env.step(info["admissible_actions"][0])
    env.expert_action()                  # the planner's next command (ALFWorld policy_commands[0])

Engine: ``textworld.envs.PddlEnv`` + ALFWorld's ``AlfredDemangler`` with the ``alfred.pddl`` domain and
``alfred.twl2`` grammar shipped in the ``alfworld`` package (:mod:`envs.household.engine`). Games: one
of the 120 ALFRED floor plans shipped in the package, its receptacles (openable or not), objects placed
by realistic priors, a goal of one of six task types and the ALFWorld task sentence
(:mod:`envs.household.scenes`). Splits: ``train`` / ``eval_seen`` (held-out (room, goal) combinations
on training rooms) / ``eval_unseen`` (ALFRED's held-out rooms). Real ALFWorld game files:
:mod:`envs.household.real`.

Observations and admissible commands are the engine's text; two presentational trims: the
"-= Welcome to TextWorld, ALFRED! =-" banner is cut from the first observation, and the meta command
"help" is left out of ``info["admissible_actions"]`` (it still works). Invalid commands answer
"Nothing happens.". Costs (CPU time, one core): small preset reset ≈ 0.06 s for a new task, 0.01 s
to replay one, 6 ms a step; default preset 0.45 s / 0.05 s / 15 ms.

Size options (each a ``(low, high)`` range drawn per task): ``receptacles`` per room (the room's own
receptacles, surplus instances dropped first), ``objects`` (distractor objects besides the targets),
``target_copies`` (instances of the target object type; pick-two tasks use ≥ 2). ``task_types``
restricts the task types; ``max_steps`` overrides the 50-step cap.
"""
from __future__ import annotations

from typing import Any

from envs.household.env import SPEC, AlfredGameEnv, HouseholdEnv
from envs.household.scenes import SPLITS, TASK_TYPES

PRESETS: dict[str, dict[str, Any]] = {
    # close to ALFWorld: rooms keep up to 30 of their receptacles, 10-25 other objects, 1-3 targets
    "default": {"receptacles": (15, 30), "objects": (10, 25), "target_copies": (1, 3)},
    # a tiny model on a CPU: 5-8 receptacles, 1-3 other objects, one target (two for pick-two)
    "small": {"receptacles": (5, 8), "objects": (1, 3), "target_copies": (1, 1)},
}
_RANGE_MIN = {"receptacles": 1, "objects": 0, "target_copies": 1}


def _check_range(name: str, value: Any) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            or not _RANGE_MIN[name] <= value[0] <= value[1]):
        raise ValueError(f"{name}: expected an int or a (low, high) pair of ints with "
                         f"{_RANGE_MIN[name]} <= low <= high, got {value!r}")
    return int(value[0]), int(value[1])


def make(split: str = "train", seed: int = 0, preset: str = "default", *, task_types=None,
         max_steps: int | None = None, **size_options: Any) -> HouseholdEnv:
    """The household environment on ``split`` of world ``seed`` (which fixes the eval_seen hold-out and
    each room's receptacle numbering); ``reset(seed=k)`` then draws task k deterministically.

    Args:
        split: "train", "eval_seen" or "eval_unseen".
        seed: world seed (int ≥ 0).
        preset: "default" (close to ALFWorld) or "small" (short observations for CPU training).
        task_types: None (all six) or a subset of ``TASK_TYPES`` (a str is one task type).
        max_steps: episode cap (default ``SPEC.max_steps`` = 50).
        **size_options: ``receptacles``, ``objects``, ``target_copies`` — int or (low, high).
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {tuple(PRESETS)}, got {preset!r}")
    unknown = set(size_options) - set(_RANGE_MIN)
    if unknown:
        raise ValueError(f"size_options: unknown option(s) {sorted(unknown)}; expected {sorted(_RANGE_MIN)}")
    options = {**PRESETS[preset], **size_options}
    options = {k: _check_range(k, v) for k, v in options.items()}
    if task_types is None:
        task_types = TASK_TYPES
    elif isinstance(task_types, str):
        task_types = (task_types,)
    task_types = tuple(dict.fromkeys(task_types))
    bad = [t for t in task_types if t not in TASK_TYPES]
    if bad or not task_types:
        raise ValueError(f"task_types: expected a non-empty subset of {TASK_TYPES}, got {task_types!r}")
    return HouseholdEnv(split, seed, task_types=task_types, max_steps=max_steps, **options)


__all__ = ["PRESETS", "SPEC", "SPLITS", "TASK_TYPES", "AlfredGameEnv", "HouseholdEnv", "make"]
