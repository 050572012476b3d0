"""Text environments for agentic RL: household (ALFWorld engine), shop (WebShop-like), search-QA.

    import envs
    env = envs.make("household", split="train", seed=0, preset="small")
    obs, info = env.reset(seed=123)
    obs, reward, done, info = env.step("go to fridge 1")
    prompt = envs.build_prompt("household", task=info["task"], observation=obs,
                               admissible_actions=info["admissible_actions"], history=[])
    reply = envs.parse_reply("household", "<think>...</think><action>go to fridge 1</action>")
    skills = envs.retrieve_skills("household", task=info["task"], task_type=info["task_type"],
                                  strategy="task_type")
"""
from __future__ import annotations

import importlib

from envs.base import Env, EnvSpec
from envs.parsing import Reply, parse_reply
from envs.prompts import build_prompt
from envs.skills import SKILL_STRATEGIES, retrieve_skills

# name -> "module:factory"; factories take (split, seed, **options) and return an Env.
_REGISTRY = {
    "household": "envs.household:make",
    "alfworld": "envs.household.real:make",  # the real ALFWorld game files under $ALFWORLD_DATA
    "shop": "envs.shop:make",
    "webshop": "envs.shop.real:make",  # the real WebShop product/goal files
    "search_qa": "envs.search_qa:make",
}
SPLITS = ("train", "eval_seen", "eval_unseen")


def make(name: str, split: str = "train", seed: int = 0, **options) -> Env:
    """Build environment ``name`` on ``split``; ``seed`` fixes the generated world (catalogue, corpus,
    scenes); ``reset(seed)`` then draws tasks. ``options`` are the environment's size knobs (e.g.
    ``preset="small"``)."""
    if name not in _REGISTRY:
        raise ValueError(f"name: unknown environment {name!r}; expected one of {sorted(_REGISTRY)}")
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    module_name, factory = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), factory)(split=split, seed=seed, **options)


def spec(name: str) -> EnvSpec:
    """The conventions (max steps, history length, format penalty, success reward) of ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"name: unknown environment {name!r}; expected one of {sorted(_REGISTRY)}")
    module_name = _REGISTRY[name].split(":")[0]
    return importlib.import_module(module_name).SPEC


__all__ = ["Env", "EnvSpec", "Reply", "SKILL_STRATEGIES", "SPLITS", "build_prompt", "make",
           "parse_reply", "retrieve_skills", "spec"]
