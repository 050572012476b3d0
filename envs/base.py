"""The interface every environment implements.

An environment is a text game: ``reset(seed)`` draws a task deterministically from the seed (GRPO group
members share one seed and so replay one game), ``step(action)`` plays one action. The trainer never
looks inside an environment; it only uses this interface, the prompt builder and the reply parser.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EnvSpec:
    """Per-environment conventions the trainer needs (published settings)."""

    name: str
    max_steps: int  # episode length cap (household 50, shop 15, search 4)
    history_turns: int  # last k turns shown in the prompt (2; 4 for search)
    format_penalty: float  # subtracted from a turn's reward when its reply is badly formatted
    success_reward: float  # reward of a won episode (10 household/shop, 1 search)
    task_types: tuple[str, ...] = field(default=())


class Env(abc.ABC):
    """A multi-turn text environment.

    ``info`` returned by ``reset`` and ``step`` always holds: ``task`` (the goal sentence), ``task_type``,
    ``admissible_actions`` (list of str; may be empty where the action space is open, e.g. search),
    ``won`` (bool), ``score`` (float in [0, 1]; 1.0 iff won for household/search, the WebShop score for
    shop), ``step`` (int, actions taken so far).
    """

    spec: EnvSpec

    @abc.abstractmethod
    def reset(self, seed: int) -> tuple[str, dict[str, Any]]:
        """Start the task drawn from ``seed``; returns (observation, info)."""

    @abc.abstractmethod
    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        """Play ``action``; returns (observation, reward, done, info). Invalid actions never raise."""

    @abc.abstractmethod
    def expert_action(self) -> str:
        """A correct next action from the current state (the oracle policy)."""

    def privileged_hint(self) -> str:
        """Instance knowledge the observation lacks, for the ``oracle`` teacher context (call right after
        ``reset``): where the household objects are, the shop's target product, the search chain's
        entities. Never shown to the student at evaluation."""
        raise NotImplementedError(f"{type(self).__name__} gives no privileged hint")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release engine resources."""
