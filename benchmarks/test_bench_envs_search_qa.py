"""Search-QA environment throughput: world + index build, reset cost, steps/s, BM25 retrieval latency,
and the reply parser on long replies.

    pytest benchmarks/test_bench_envs_search_qa.py -p no:randomly --benchmark-columns=mean,stddev,rounds -s

steps/s are stored in each benchmark's ``extra_info`` (and printed with ``-s``).
"""
from __future__ import annotations

import random

import pytest

import envs
from envs.parsing import parse_reply
from envs.search_qa.corpus import PRESETS, generate_world
from envs.search_qa.retriever import BM25Retriever

PRESET_NAMES = ["small", "default"]


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_bench_world_build(benchmark, preset):
    """Corpus generation + BM25 indexing, uncached (make caches this once per process and seed)."""
    benchmark.pedantic(lambda: BM25Retriever(generate_world(7, **PRESETS[preset]).passages), rounds=3,
                       iterations=1)


@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_bench_reset(benchmark, preset):
    env = envs.make("search_qa", seed=0, preset=preset)
    seeds = iter(range(10**9))
    benchmark(lambda: env.reset(next(seeds)))


def _episodes(env, policy, n, start):
    steps = 0
    for k in range(start, start + n):
        env.reset(k)
        done = False
        while not done:
            _, _, done, _ = env.step(policy(env))
            steps += 1
    return steps


@pytest.mark.parametrize("agent", ["expert", "random"])
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_bench_steps_per_second(benchmark, preset, agent):
    """Whole episodes (reset + steps); new task seeds every round. The random agent searches random
    entity names three times (cache misses mostly), then answers a random name."""
    env = envs.make("search_qa", seed=0, preset=preset)
    rng = random.Random(0)
    names = [e.name for e in env.world.entities]
    if agent == "expert":
        policy = lambda env: env.expert_action()  # noqa: E731
    else:
        policy = lambda env: (f"search[{rng.choice(names)}]" if env.turn < 3  # noqa: E731
                              else f"answer[{rng.choice(names)}]")
    counter = iter(range(0, 10**9, 50))
    steps = []
    benchmark.pedantic(lambda: steps.append(_episodes(env, policy, 50, next(counter))), rounds=5,
                       iterations=1)
    steps_per_s = sum(steps) / len(steps) / benchmark.stats.stats.mean
    benchmark.extra_info["steps_per_s"] = round(steps_per_s)
    print(f"\nsearch_qa {preset} {agent}: {steps_per_s:,.0f} steps/s")


@pytest.mark.parametrize("cached", [False, True])
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_bench_retrieval_latency(benchmark, preset, cached):
    """One top-3 BM25 query (with the <information> formatting)."""
    env = envs.make("search_qa", seed=0, preset=preset)
    retriever = env.retriever
    queries = [e.name for e in env.world.entities[:200]]
    it = iter(range(10**9))

    def one():
        if not cached:
            retriever._cache.clear()
        return retriever.information(queries[next(it) % len(queries)])

    benchmark(one)


def test_bench_parse_long_reply(benchmark):
    text = "<think>" + "reasoning " * 1000 + "</think><search>Varnex Labs founder</search>"
    reply = benchmark(lambda: parse_reply("search_qa", text))
    assert reply.valid_format
