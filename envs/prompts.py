"""Per-turn prompt templates (the user message of each turn).

Each turn's prompt is rebuilt from the task, the last k (observation, action) turns of history, the
current observation, the admissible actions and the reply-format instruction (k = 2 for household and
shop, 4 for search). The teacher sees the same prompt with the privileged skills prepended
(:func:`with_skills`).

History convention: ``history[i] = (observation_i, action_i)`` — the observation the agent saw at turn
i and the action it took; ``observation`` is the one it sees now. Empty observations are not shown
(search_qa's reset observation is empty: nothing has been retrieved yet). Search actions may be given as
the environment's canonical ``search[q]`` / ``answer[a]`` strings and are shown in the tag format.
"""
from __future__ import annotations

from collections.abc import Sequence

from envs.parsing import ACTION_ENVS, SEARCH_ENVS

PRIVILEGED_TEMPLATE = "[Privileged Skill Information]\n{skills}\n\n"

# Published defaults (EnvSpec.history_turns); kept here so this module imports no environment.
DEFAULT_HISTORY_TURNS = {"household": 2, "alfworld": 2, "shop": 2, "webshop": 2, "search_qa": 4}

_ACTION_FORMAT = ("Think step by step inside <think>...</think>, then give exactly one admissible action "
                  "inside <action>...</action>.")
_SEARCH_FORMAT = ("Think inside <think>...</think>, then either search the knowledge base with "
                  "<search>query</search> (top 3 passages are returned) or give the final short answer "
                  "with <answer>...</answer>.")
_TASK_PREFIX = "your task is to:"


def with_skills(prompt: str, skills: str) -> str:
    """The teacher's prompt: ``PRIVILEGED_TEMPLATE`` filled with ``skills``, then ``prompt``."""
    if not isinstance(prompt, str) or not isinstance(skills, str):
        raise TypeError("prompt, skills: expected str")
    return PRIVILEGED_TEMPLATE.format(skills=skills) + prompt


def _search_action_text(action: str) -> str:
    for kind in ("search", "answer"):
        if action.startswith(f"{kind}[") and action.endswith("]"):
            return f"<{kind}>{action[len(kind) + 1:-1]}</{kind}>"
    return action


def build_prompt(env_name: str, *, task: str, observation: str, admissible_actions: Sequence[str],
                 history: Sequence[tuple[str, str]], history_turns: int | None = None,
                 step: int | None = None) -> str:
    """The user-message text of one turn.

    Args:
        env_name: household, alfworld, shop, webshop or search_qa.
        task: the task sentence (search_qa: the question).
        observation: the current observation ("" shows none).
        admissible_actions: the actions allowed now (search_qa: empty, the action space is open).
        history: all earlier (observation, action) turns of the episode, oldest first; only the last
            ``history_turns`` are shown.
        history_turns: k; None → the environment's published default (2; 4 for search_qa); 0 → none.
        step: actions taken so far (shown as the turn number); None → ``len(history)``.
    Returns:
        the prompt string.
    """
    if env_name not in ACTION_ENVS + SEARCH_ENVS:
        raise ValueError(f"env_name: expected one of {ACTION_ENVS + SEARCH_ENVS}, got {env_name!r}")
    for name, value in (("task", task), ("observation", observation)):
        if not isinstance(value, str):
            raise TypeError(f"{name}: expected str, got {type(value).__name__}")
    k = DEFAULT_HISTORY_TURNS[env_name] if history_turns is None else history_turns
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"history_turns: expected a non-negative int or None, got {history_turns!r}")
    history = list(history)
    for turn in history:
        if not (isinstance(turn, (tuple, list)) and len(turn) == 2):
            raise TypeError("history: expected a sequence of (observation, action) pairs")
    step = len(history) if step is None else step
    shown = history[len(history) - k:] if k else []
    first = step - len(shown) + 1  # turn number of the first shown turn

    lines = []
    if env_name in SEARCH_ENVS:
        lines.append(f"Question: {task.strip()}")
        if shown:
            lines.append(f"Previous turns (last {len(shown)}):")
            for i, (obs, act) in enumerate(shown):
                if obs:
                    lines.append(obs)
                lines.append(f"[{first + i}] {_search_action_text(str(act))}")
        if observation:
            lines.append(observation)
        lines.append(f"Turn {step + 1}. {_SEARCH_FORMAT}")
        return "\n".join(lines)

    task_text = task.strip()
    if task_text.lower().startswith(_TASK_PREFIX):
        task_text = task_text[len(_TASK_PREFIX):].strip()
    lines.append(f"Task: {task_text}")
    if shown:
        lines.append(f"Last {len(shown)} of {step} steps:")
        for i, (obs, act) in enumerate(shown):
            if obs:
                lines.append(f"[{first + i}] Observation: {obs}")
            lines.append(f"[{first + i}] Action: {act}")
    lines.append(f"Step {step + 1}. Observation: {observation}" if observation else f"Step {step + 1}.")
    if admissible_actions:
        lines.append("Admissible actions: " + " | ".join(str(a) for a in admissible_actions))
    lines.append(_ACTION_FORMAT)
    return "\n".join(lines)


__all__ = ["DEFAULT_HISTORY_TURNS", "PRIVILEGED_TEMPLATE", "build_prompt", "with_skills"]
