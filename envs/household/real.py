"""Real ALFWorld games: ``envs.make("alfworld", ...)`` plays the official game files.

Expected layout (what ``alfworld-download`` + ``alfworld-generate`` leave under ``$ALFWORLD_DATA``)::

    $ALFWORLD_DATA/json_2.1.1/{train,valid_seen,valid_unseen}/<task>/<trial>/game.tw-pddl
                                                                          /traj_data.json

Splits map train → train, eval_seen → valid_seen, eval_unseen → valid_unseen. As in ALFWorld's
``AlfredTWEnv.collect_game_files``: games under "movable"/"Sliced" folders, games marked unsolvable and
games without a ``traj_data.json`` task type are skipped. ``reset(seed=k)`` plays game ``k mod n`` of
a fixed, ``seed``-shuffled order of the split's games. The engine, reward and expert are those of the
generated household environment (:class:`envs.household.env.AlfredGameEnv`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path

from envs.household import env as _household
from envs.household.engine import game_data
from envs.household.env import AlfredGameEnv
from envs.household.scenes import ALFWORLD_TASK_TYPES, TASK_TYPES, Problem

SPEC = dataclasses.replace(_household.SPEC, name="alfworld")

SPLIT_DIRS = {"train": "train", "eval_seen": "valid_seen", "eval_unseen": "valid_unseen"}
_OUR_TASK_TYPE = {v: k for k, v in ALFWORLD_TASK_TYPES.items()}
_TASK_PREFIX = "Your task is to: "


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir`` or ``$ALFWORLD_DATA``; raises FileNotFoundError naming ALFWORLD_DATA when absent."""
    root = data_dir if data_dir is not None else os.environ.get("ALFWORLD_DATA")
    if not root:
        raise FileNotFoundError("alfworld: no game files. Set ALFWORLD_DATA (or pass data_dir=) to the folder "
                                "holding json_2.1.1/{train,valid_seen,valid_unseen}/.../game.tw-pddl "
                                "(alfworld-download && alfworld-generate), or use envs.make('household') for "
                                "locally generated games.")
    root = Path(root).expanduser()
    if not (root / "json_2.1.1").is_dir():
        raise FileNotFoundError(f"alfworld: {root} (from ALFWORLD_DATA / data_dir) has no json_2.1.1/ folder; "
                                "expected json_2.1.1/{train,valid_seen,valid_unseen}/.../game.tw-pddl")
    return root


def collect_games(root: Path, split: str, task_types: tuple[str, ...]) -> list[tuple[Path, str]]:
    """Sorted (game.tw-pddl path, our task type) pairs of ``split`` under ``root``."""
    split_dir = root / "json_2.1.1" / SPLIT_DIRS[split]
    games = []
    for traj_path in sorted(split_dir.rglob("traj_data.json")):
        folder = traj_path.parent
        game_path = folder / "game.tw-pddl"
        rel = str(folder.relative_to(split_dir))
        if "movable" in rel or "Sliced" in rel or not game_path.is_file():
            continue
        try:
            task_type = _OUR_TASK_TYPE.get(json.loads(traj_path.read_text())["task_type"])
            solvable = json.loads(game_path.read_text()).get("solvable", True)
        except (OSError, ValueError, KeyError):
            continue
        if task_type in task_types and solvable:
            games.append((game_path, task_type))
    return games


def write_game(folder: str | os.PathLike, problem: Problem) -> Path:
    """Save a generated game in ALFWorld's on-disk format (``initial_state.pddl``, ``traj_data.json``,
    ``game.tw-pddl``) under ``folder``; returns the game file's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    goal = problem.goal
    (folder / "initial_state.pddl").write_text(problem.pddl)
    traj = {"task_type": ALFWORLD_TASK_TYPES[goal.task_type], "scene": {"floor_plan": f"FloorPlan{problem.floorplan}"},
            "pddl_params": {"object_target": goal.obj, "parent_target": goal.parent, "toggle_target": goal.toggle,
                            "mrecep_target": "", "object_sliced": False},
            "turk_annotations": {"anns": [{"task_desc": problem.task}]}}
    (folder / "traj_data.json").write_text(json.dumps(traj, indent=1))
    game_path = folder / "game.tw-pddl"
    game_path.write_text(json.dumps(game_data(problem.pddl, problem.task)))
    return game_path


class AlfworldFilesEnv(AlfredGameEnv):
    """Real ALFWorld game files on the same engine and interface as the generated games."""

    spec = SPEC

    def __init__(self, split: str, seed: int, games: list[tuple[Path, str]], *, max_steps: int | None = None):
        super().__init__(max_steps=max_steps)
        self.split, self.seed = split, seed
        self.games = list(games)
        random.Random(f"alfworld|{seed}|{split}").shuffle(self.games)

    def _draw(self, seed: int):
        path, task_type = self.games[seed % len(self.games)]
        return str(path), "", task_type, {"gamefile": str(path)}

    def reset(self, seed: int):
        obs, info = super().reset(seed)
        # The task sentence lives in the game's grammar; read it back from the intro.
        line = next((ln for ln in obs.splitlines() if ln.startswith(_TASK_PREFIX)), "")
        self._task = line[len(_TASK_PREFIX):].strip()
        return obs, self._info()


def make(split: str = "train", seed: int = 0, data_dir: str | os.PathLike | None = None, *, task_types=None,
         max_steps: int | None = None, **options) -> AlfworldFilesEnv:
    """Play the real ALFWorld games of ``split`` found under ``data_dir`` or ``$ALFWORLD_DATA``.

    ``preset`` is accepted and ignored (real games have their own size); other options raise.
    """
    if split not in SPLIT_DIRS:
        raise ValueError(f"split: expected one of {tuple(SPLIT_DIRS)}, got {split!r}")
    options.pop("preset", None)
    if options:
        raise ValueError(f"options: unknown option(s) {sorted(options)} for real ALFWorld games")
    task_types = TASK_TYPES if task_types is None else ((task_types,) if isinstance(task_types, str)
                                                        else tuple(task_types))
    if not task_types or any(t not in TASK_TYPES for t in task_types):
        raise ValueError(f"task_types: expected a non-empty subset of {TASK_TYPES}, got {task_types!r}")
    root = resolve_data_dir(data_dir)
    games = collect_games(root, split, task_types)
    if not games:
        raise FileNotFoundError(f"alfworld: no playable game.tw-pddl of task types {task_types} under "
                                f"{root / 'json_2.1.1' / SPLIT_DIRS[split]} (ALFWORLD_DATA / data_dir)")
    return AlfworldFilesEnv(split, seed, games, max_steps=max_steps)


__all__ = ["SPEC", "SPLIT_DIRS", "AlfworldFilesEnv", "collect_games", "make", "resolve_data_dir", "write_game"]
