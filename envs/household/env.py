"""The household ``Env``: ALFWorld games (generated or from files) played on the real engine."""
from __future__ import annotations

import abc
from typing import Any

from envs.base import Env, EnvSpec
from envs.household import scenes
from envs.household.engine import AlfredEngine, game_data

# ALFWorld's engine lists "help" (a meta command printing the command list) among the admissible
# commands; like the public agentic-RL ALFWorld wrappers we leave it out of the list (it still works).
_HIDDEN_COMMANDS = frozenset({"help"})

SPEC = EnvSpec(name="household", max_steps=50, history_turns=2, format_penalty=0.1, success_reward=10.0,
               task_types=scenes.TASK_TYPES)


class AlfredGameEnv(Env):
    """Plays one ALFWorld game per ``reset(seed)`` through :class:`AlfredEngine`.

    Reward: ``spec.success_reward`` (10) on the step that wins, else 0. ``done`` when won or after
    ``max_steps`` actions. Any string is a legal input: unknown commands answer "Nothing happens."
    (the engine's reply) and still cost a step; ``None`` counts as an empty command. After ``done``,
    ``step`` changes nothing and returns reward 0.
    """

    spec = SPEC

    def __init__(self, *, max_steps: int | None = None) -> None:
        max_steps = self.spec.max_steps if max_steps is None else max_steps
        if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 1:
            raise ValueError(f"max_steps: expected a positive int, got {max_steps!r}")
        self.max_steps = max_steps
        self._engine = AlfredEngine()
        self._task = self._task_type = None
        self._admissible: list[str] = []
        self._obs = ""
        self._steps = 0
        self._won = self._done = False
        self.game_info: dict[str, Any] = {}

    @abc.abstractmethod
    def _draw(self, seed: int) -> tuple[dict[str, Any] | str, str, str, dict[str, Any]]:
        """(game.tw-pddl dict or path, task sentence, task type, extra info) of task ``seed``."""

    def _info(self) -> dict[str, Any]:
        return {"task": self._task, "task_type": self._task_type, "admissible_actions": list(self._admissible),
                "won": self._won, "score": 1.0 if self._won else 0.0, "step": self._steps, **self.game_info}

    def reset(self, seed: int) -> tuple[str, dict[str, Any]]:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
        game, self._task, self._task_type, self.game_info = self._draw(seed)
        self._engine.load(game)
        self._obs, admissible, self._won = self._engine.reset()
        self._admissible = [a for a in admissible if a not in _HIDDEN_COMMANDS]
        self._steps, self._done = 0, self._won
        return self._obs, self._info()

    def step(self, action: str | None) -> tuple[str, float, bool, dict[str, Any]]:
        if self._task is None:
            raise RuntimeError("step: call reset(seed) first")
        if action is None:
            action = ""
        if not isinstance(action, str):
            raise TypeError(f"action: expected str, got {type(action).__name__}")
        if self._done:
            return self._obs, 0.0, True, self._info()
        self._obs, admissible, won = self._engine.step(action)
        self._admissible = [a for a in admissible if a not in _HIDDEN_COMMANDS]
        self._steps += 1
        reward = self.spec.success_reward if won and not self._won else 0.0
        self._won = won
        self._done = won or self._steps >= self.max_steps
        return self._obs, reward, self._done, self._info()

    def expert_action(self) -> str:
        """The planner expert's next command (ALFWorld ``policy_commands[0]``); "look" when there is
        no plan (after the episode ended)."""
        if self._task is None:
            raise RuntimeError("expert_action: call reset(seed) first")
        plan = [] if self._done else self._engine.plan()
        return plan[0] if plan else "look"

    def expert_plan(self) -> list[str]:
        """The planner's whole remaining plan from the current state."""
        if self._task is None:
            raise RuntimeError("expert_plan: call reset(seed) first")
        return [] if self._done else list(self._engine.plan())

    def privileged_hint(self) -> str:
        """Where the planner takes the goal object(s) from: "tomato 1 is at microwave 1." per object."""
        takes = [c.removeprefix("take ").split(" from ") for c in self.expert_plan() if c.startswith("take ")]
        return " ".join(f"{obj} is at {where}." for obj, where in takes)

    def close(self) -> None:
        self._engine.close()


class HouseholdEnv(AlfredGameEnv):
    """Generated ALFWorld games (see :mod:`envs.household.scenes`) on the real engine."""

    def __init__(self, split: str, seed: int, *, task_types: tuple[str, ...], receptacles: tuple[int, int],
                 objects: tuple[int, int], target_copies: tuple[int, int], max_steps: int | None = None) -> None:
        super().__init__(max_steps=max_steps)
        self.split, self.seed = split, seed
        self.options = {"task_types": task_types, "receptacles": receptacles, "objects": objects,
                        "target_copies": target_copies}
        self.problem: scenes.Problem | None = None

    def _draw(self, seed: int):
        self.problem = problem = scenes.generate(self.seed, self.split, seed, **self.options)
        info = {"floorplan": problem.floorplan, "goal": (problem.goal.obj, problem.goal.parent, problem.goal.toggle)}
        return game_data(problem.pddl, problem.task), problem.task, problem.goal.task_type, info
