"""Household environment (real ALFWorld engine on generated games): step throughput and reset cost.

    pytest benchmarks/test_bench_envs_household.py --benchmark-columns=mean,median,ops

- ``reset_new``: reset to a task not seen before (generation + PDDL→SAS translation + grammar).
- ``reset_replay``: reset to the same task again (what GRPO group members do; translations cached).
- ``step``: one random admissible command (the engine recomputes the admissible commands each step).
- ``expert``: one planner call (``expert_action``) from a fresh state.
"""
from __future__ import annotations

import itertools
import random

import pytest

from envs.household import make

PRESETS = ("small", "default")


@pytest.mark.parametrize("preset", PRESETS)
def test_reset_new_task(benchmark, preset):
    env = make("train", 0, preset)
    env.reset(0)
    seeds = itertools.count(1)
    benchmark.pedantic(lambda: env.reset(next(seeds)), rounds=8, iterations=1)


@pytest.mark.parametrize("preset", PRESETS)
def test_reset_replay(benchmark, preset):
    env = make("train", 0, preset)
    env.reset(7)
    benchmark.pedantic(lambda: env.reset(7), rounds=10, iterations=1)


@pytest.mark.parametrize("preset", PRESETS)
def test_step_throughput(benchmark, preset):
    env = make("train", 0, preset, max_steps=10_000)
    rng = random.Random(0)
    state = {"info": env.reset(3)[1]}

    def step():
        _, _, done, state["info"] = env.step(rng.choice(state["info"]["admissible_actions"]))
        if done:
            state["info"] = env.reset(3)[1]

    benchmark.pedantic(step, rounds=40, iterations=1, warmup_rounds=2)
    benchmark.extra_info["steps_per_s"] = 1.0 / benchmark.stats.stats.mean


@pytest.mark.parametrize("preset", PRESETS)
def test_expert_action(benchmark, preset):
    env = make("train", 0, preset)
    seeds = itertools.count(20)

    def setup():
        env.reset(next(seeds))
        return (), {}

    benchmark.pedantic(env.expert_action, setup=setup, rounds=6, iterations=1)
