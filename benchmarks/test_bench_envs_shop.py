"""Shop environment throughput: catalogue + index build, reset cost, steps/s, BM25 search latency.

    pytest benchmarks/test_bench_envs_shop.py -p no:randomly --benchmark-columns=mean,stddev,rounds

steps/s are stored in each benchmark's ``extra_info`` (and printed with ``-s``).
"""
from __future__ import annotations

import random

import pytest

import envs.shop as shop
from envs.shop.catalogue import generate_catalogue
from envs.shop.search import SearchIndex

PRESETS = ["small", "default"]


@pytest.mark.parametrize("preset", PRESETS)
def test_bench_world_build(benchmark, preset):
    """Catalogue generation + BM25 indexing, uncached (load_world caches this once per process)."""
    config = shop.config_for(preset)
    benchmark.pedantic(lambda: SearchIndex(generate_catalogue(7, config.n_products,
                                                              short=config.short_catalogue)),
                       rounds=3, iterations=1)


@pytest.mark.parametrize("preset", PRESETS)
def test_bench_reset(benchmark, preset):
    env = shop.make("train", seed=0, preset=preset)
    seeds = iter(range(10**9))
    benchmark(lambda: env.reset(next(seeds)))


def _episodes(env, policy, n, start):
    steps = 0
    for k in range(start, start + n):
        _, info = env.reset(k)
        done = False
        while not done:
            _, _, done, info = env.step(policy(env, info))
            steps += 1
    return steps


@pytest.mark.parametrize("agent", ["expert", "random"])
@pytest.mark.parametrize("preset", PRESETS)
def test_bench_steps_per_second(benchmark, preset, agent):
    """Whole episodes (reset + steps; expert includes its planning); new task seeds every round, so
    searches mostly miss the query cache."""
    env = shop.make("train", seed=0, preset=preset)
    rng = random.Random(0)
    if agent == "expert":
        policy = lambda env, info: env.expert_action()  # noqa: E731
    else:
        policy = lambda env, info: (f"search[{info['task']}]" if info["page"] == "search"  # noqa: E731
                                    else rng.choice(info["admissible_actions"]))
    counter = iter(range(0, 10**9, 20))
    steps = []
    benchmark.pedantic(lambda: steps.append(_episodes(env, policy, 20, next(counter))), rounds=5,
                       iterations=1)
    steps_per_s = sum(steps) / len(steps) / benchmark.stats.stats.mean
    benchmark.extra_info["steps_per_s"] = round(steps_per_s)
    print(f"\nshop {preset} {agent}: {steps_per_s:,.0f} steps/s")


@pytest.mark.parametrize("cached", [False, True])
def test_bench_search_latency(benchmark, cached):
    """One BM25 query on the default catalogue (1,200 products, top 50)."""
    _, index = shop.load_world(0, 1200, False)
    queries = [f"{a} {b} shirt" for a in ("cotton", "slim fit", "long sleeve") for b in ("blue", "xl", "men")]
    it = iter(range(10**9))

    def one():
        if not cached:
            index._cache.clear()
        return index.search(queries[next(it) % len(queries)], 50)

    benchmark(one)
