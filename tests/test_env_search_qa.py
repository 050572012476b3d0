"""Search-QA environment: scoring, retrieval, the expert, a random agent, splits, determinism, real data."""
from __future__ import annotations

import json
import random

import pytest

import envs
from envs.search_qa import (INVALID_ACTION, SAMPLE_CORPUS, SAMPLE_QA, SPEC, TASK_TYPES, exact_match,
                            normalize_answer, parse_action)
from envs.search_qa.real import load_corpus, load_qa
from envs.search_qa.retriever import BM25Retriever


# --------------------------------------------------------------------------- SQuAD normalisation
@pytest.mark.parametrize("text, expected", [
    ("The Eiffel Tower", "eiffel tower"),
    ("  an   Apple,  a day! ", "apple day"),
    ("Stratford-upon-Avon", "stratforduponavon"),
    ("U.S.A.", "usa"),
    ("Theatre of the Absurd", "theatre of absurd"),  # "the" inside words is kept
    ("1,234 km", "1234 km"),
    ("", ""),
])
def test_normalize_answer_hand_cases(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match():
    assert exact_match("the  Nile.", ["Nile"])
    assert exact_match("NILE", "nile")
    assert exact_match("Paul Allen", ["Bill Gates", "Paul Allen"])
    assert not exact_match("Nile river", ["Nile"])
    assert not exact_match("", ["Nile"])
    assert not exact_match("Nile", [])


def test_parse_action_forms():
    assert parse_action("search[ Varnex Labs ]") == ("search", "Varnex Labs")
    assert parse_action("Answer[1923]") == ("answer", "1923")
    assert parse_action("<answer>x</answer>") == ("answer", "x")
    assert parse_action("search Varnex") == (None, "")
    assert parse_action("click[Buy Now]") == (None, "")


# --------------------------------------------------------------------------- env mechanics
@pytest.fixture(scope="module")
def small():
    return envs.make("search_qa", preset="small", seed=0)


def test_spec_and_registry():
    assert envs.spec("search_qa") is SPEC
    assert (SPEC.max_steps, SPEC.history_turns, SPEC.format_penalty, SPEC.success_reward) == (4, 4, 0.01, 1.0)
    assert SPEC.task_types == TASK_TYPES


def test_corpus_sizes():
    assert len(envs.make("search_qa", preset="default").world.passages) >= 2000
    small = envs.make("search_qa", preset="small").world
    assert 200 <= len(small.passages) <= 400
    assert max(len(p["text"].split()) for p in small.passages) <= 30
    names = [e.name.lower() for e in small.entities]
    assert len(set(names)) == len(names)


def test_search_observation_format(small):
    obs, info = small.reset(seed=3)
    assert obs == "" and info["admissible_actions"] == [] and info["step"] == 0 and not info["won"]
    entity = small.world.entities[small.question.chain[0]]
    obs, reward, done, info = small.step(f"search[{entity.name}]")
    assert obs.startswith("<information>Doc 1: ") and obs.endswith("</information>")
    lines = obs[len("<information>"):-len("</information>")].split("\n")
    assert [line.split(":")[0] for line in lines] == ["Doc 1", "Doc 2", "Doc 3"]
    assert lines[0] == "Doc 1: " + small.world.passages[entity.id]["text"]  # its own passage ranks first
    assert (reward, done, info["step"]) == (0.0, False, 1)


def test_answer_rewards(small):
    small.reset(seed=5)
    gold = small.question.golden_answers[0]
    obs, reward, done, info = small.step(f"answer[  {gold.upper()}. ]")
    assert (reward, done, info["won"], info["score"]) == (1.0, True, True, 1.0)
    assert small.step("answer[x]")[1:3] == (0.0, True)  # after the end: nothing more
    small.reset(seed=5)
    obs, reward, done, info = small.step("answer[certainly not the answer]")
    assert (reward, done, info["won"], info["score"]) == (0.0, True, False, 0.0)


def test_invalid_actions_and_turn_limit(small):
    small.reset(seed=9)
    for turn, action in enumerate(["search for it", "", "search[]", "<think>x</think>"], start=1):
        obs, reward, done, info = small.step(action)
        assert obs == INVALID_ACTION and reward == 0.0 and info["step"] == turn
        assert done is (turn == SPEC.max_steps)
    with pytest.raises(TypeError, match="action"):
        small.step(None)


def test_determinism_and_distinct_tasks(small):
    other = envs.make("search_qa", preset="small", seed=0)
    for k in range(20):
        a, b = small.reset(seed=k)[1], other.reset(seed=k)[1]
        assert a == b and small.question == other.question
        action = small.expert_action()
        assert action == other.expert_action() and small.step(action) == other.step(action)
    tasks = {small.reset(seed=k)[1]["task"] for k in range(100)}
    assert len(tasks) >= 90
    import numpy as np

    assert small.reset(seed=np.int64(7)) == small.reset(seed=7)
    with pytest.raises(TypeError, match="seed"):
        small.reset(seed="7")
    world1 = envs.make("search_qa", preset="small", seed=1).world
    assert [e.name for e in world1.entities] != [e.name for e in small.world.entities]


def test_splits_are_disjoint():
    keys = {}
    for split in envs.SPLITS:
        env = envs.make("search_qa", split=split, preset="small")
        keys[split] = {env.draw(k).key for k in range(150)}
        held = env._held_out
        topics = {env.draw(k).chain[0] for k in range(150)}
        if split == "train":
            assert not (topics & held)
    assert not keys["train"] & keys["eval_seen"]
    assert not keys["train"] & keys["eval_unseen"] and not keys["eval_seen"] & keys["eval_unseen"]


def test_task_type_counts(small):
    counts = {t: 0 for t in TASK_TYPES}
    for k in range(200):
        counts[small.reset(seed=k)[1]["task_type"]] += 1
    assert all(c >= 25 for c in counts.values()), counts


# --------------------------------------------------------------------------- expert and random agent
def _play_expert(env, k):
    env.reset(seed=k)
    done, retrieved = False, ""
    while not done:
        obs, reward, done, info = env.step(env.expert_action())
        retrieved += " " + obs.replace("<", " <").replace(">", "> ")  # keep tags apart from words
    answer_seen = normalize_answer(env.question.golden_answers[0]) in normalize_answer(retrieved)
    return info["won"] and answer_seen, info["step"]


@pytest.mark.parametrize("split", envs.SPLITS)
@pytest.mark.parametrize("preset", ["small", "default"])
def test_expert_200_per_kind(preset, split):
    """The oracle solves >= 95 % of 200 questions of each kind (about 0.5 s per preset and split)."""
    for task_type in TASK_TYPES:
        env = envs.make("search_qa", preset=preset, task_types=(task_type,), split=split)
        results = [_play_expert(env, k) for k in range(200)]
        wins = sum(ok for ok, _ in results)
        assert wins >= 190, (preset, split, task_type, wins)
        # One search per hop at most (a hop is skipped when an earlier search returned its passage).
        hops = {"lookup": 1, "attribute": 1, "multihop": 2, "comparison": 2}[task_type]
        assert all(2 <= steps <= hops + 1 for _, steps in results)


@pytest.mark.parametrize("preset", ["small", "default"])
def test_expert_three_hops(preset):
    env = envs.make("search_qa", preset=preset, task_types=("multihop",), hops=3)
    results, three = [], 0
    for k in range(200):
        results.append(_play_expert(env, k))
        three += len(env.question.chain) == 3
    assert 40 <= three <= 90  # 2 templates in 7
    assert sum(ok for ok, _ in results) >= 190
    assert max(steps for _, steps in results) == 4  # three searches and the answer fit in 4 turns


def test_random_agent_rarely_wins(small):
    rng = random.Random(0)
    names = [e.name for e in small.world.entities]
    wins = 0
    for k in range(200):
        small.reset(seed=k)
        wins += small.step(f"answer[{rng.choice(names)}]")[1]
    assert wins <= 4  # 1 in 250 per guess at best


def test_expert_needs_the_retrieval(small):
    """Without searching, the expert's answer-from-retrieved-text rule has nothing to copy."""
    wins = 0
    for k in range(100):
        small.reset(seed=k)
        small.max_turns = 1  # no turn left for a search
        wins += small.step(small.expert_action())[1]
        small.max_turns = SPEC.max_steps
    assert wins <= 55  # only comparisons (the names are in the question) can be guessed


# --------------------------------------------------------------------------- retriever
def test_retriever_ranks_and_ties():
    passages = [{"title": "A", "text": "apple banana"}, {"title": "B", "text": "banana cherry"},
                {"title": "C", "text": "cherry date"}, {"title": "D", "text": "apple apple apple"}]
    r = BM25Retriever(passages, top_k=2)
    assert r.search("apple")[0] == 3 and set(r.search("apple")) == {0, 3}
    assert r.search("zebra") == () and r.information("zebra") == "<information>No results.</information>"
    assert r.search("") == ()
    assert r.information("cherry").count("Doc ") == 2
    with pytest.raises(ValueError, match="top_k"):
        BM25Retriever(passages, top_k=0)


# --------------------------------------------------------------------------- real data
def test_real_sample_loader_through_datasets(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    questions = load_qa(SAMPLE_QA)
    corpus = load_corpus(SAMPLE_CORPUS)
    rows = [json.loads(line) for line in SAMPLE_QA.read_text(encoding="utf-8").splitlines()]
    assert len(questions) == len(rows) >= 20 and len(corpus) >= 25
    assert [tuple(r["golden_answers"]) for r in rows] == [q.golden_answers for q in questions]
    assert {q.data_source for q in questions} >= {"nq", "triviaqa", "hotpotqa"}
    assert {q.task_type for q in questions} >= {"lookup", "attribute", "multihop"}


def test_real_sample_env_with_expert():
    env = envs.make("search_qa", qa_file=SAMPLE_QA, corpus_file=SAMPLE_CORPUS, seed=0)
    n = len(load_qa(SAMPLE_QA))
    tasks, wins = set(), 0
    for k in range(n):
        obs, info = env.reset(seed=k)
        tasks.add(info["task"])
        done = False
        while not done:
            obs, reward, done, info = env.step(env.expert_action())
        wins += info["won"]
    assert len(tasks) == n  # reset(k) for k < n visits every row once
    assert wins >= 0.8 * n  # one search with the question text, then copy from the passages
    env.reset(seed=0)
    assert env.step("answer[a wrong answer]")[1] == 0.0


def test_real_loader_formats(tmp_path):
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "who wrote hamlet", "answer": "Shakespeare"}) + "\n"
                  + json.dumps({"question": "capital of peru?", "golden_answers": ["Lima"],
                                "data_source": "nq"}) + "\n", encoding="utf-8")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "1", "contents": "\"Hamlet\"\nHamlet is a tragedy by Shakespeare."})
                      + "\n" + json.dumps({"id": "2", "title": "Lima", "text": "Lima is the capital of Peru."})
                      + "\n", encoding="utf-8")
    qs = load_qa(qa)
    assert qs[0].question == "who wrote hamlet?" and qs[0].golden_answers == ("Shakespeare",)
    assert qs[0].data_source == "real" and qs[1].task_type == "lookup"
    env = envs.make("search_qa", qa_file=qa, corpus_file=corpus)
    env.reset(seed=0)
    obs = env.step("search[capital of Peru]")[0]
    assert obs.startswith("<information>Doc 1: Lima is the capital of Peru.")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="golden_answers"):
        load_qa(bad)


def test_make_bad_arguments():
    with pytest.raises(ValueError, match="preset"):
        envs.make("search_qa", preset="huge")
    with pytest.raises(ValueError, match="task_types"):
        envs.make("search_qa", preset="small", task_types=("trivia",))
    with pytest.raises(ValueError, match="size_options"):
        envs.make("search_qa", preset="small", n_planets=3)
    with pytest.raises(ValueError, match="qa_file"):
        envs.make("search_qa", qa_file=SAMPLE_QA)
    with pytest.raises(ValueError, match="hops"):
        envs.make("search_qa", preset="small", hops=3, max_turns=3)
    with pytest.raises(ValueError, match="n_people"):
        envs.make("search_qa", preset="small", n_people=1)
