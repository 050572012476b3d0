"""Search-QA: answer questions by searching a BM25-indexed passage corpus (Search-R1 conventions).

    env = envs.make("search_qa", split="train", seed=0, preset="small")
    obs, info = env.reset(seed=7)          # obs == "" (nothing retrieved yet); info["task"] is the question
    obs, r, done, info = env.step("search[Varnex Labs]")   # obs: <information>Doc 1: …\\nDoc 2: …</information>
    obs, r, done, info = env.step("answer[Mira Kouth]")    # r = 1.0 iff exact match (SQuAD normalisation)

Actions are raw strings in the canonical forms ``search[<query>]`` and ``answer[<text>]`` (the tag forms
``<search>…</search>`` / ``<answer>…</answer>`` are accepted too; ``envs.parsing.env_action`` maps a
parsed reply to the canonical form). Anything else is an invalid action: it costs a turn and returns a
reminder. ``answer`` ends the episode; so does the 4th turn (``SPEC.max_steps``). Rewards: 1.0 for an
exact-match answer, else 0 (the format penalty is the trainer's). ``admissible_actions`` is always [].

Scale knobs: ``preset`` ("default" ≥ 2,000 encyclopedia-stub passages; "small" ≈ 250 one-sentence
passages), the entity counts, ``top_k`` and ``hops`` (3 adds 3-hop multihop questions).

Worlds: ``seed`` draws the corpus (see ``corpus.py``); ``reset(seed=k)`` draws question k of the split.
Splits are disjoint: 20 % of entities are held out (questions about them are ``eval_unseen`` only);
questions about the other entities go to ``eval_seen`` (1 in 10, by a hash of the question) or
``train``. With ``qa_file`` / ``corpus_file`` the env plays real data instead (``real.py``); the file
given is used for whichever split is asked for, question k being row ``perm[k mod n]``.
"""
from __future__ import annotations

import operator
import random
import zlib
from typing import Any

from envs.base import Env, EnvSpec
from envs.search_qa.corpus import PRESETS, World, generate_world
from envs.search_qa.questions import TASK_TYPES, Question, exact_match, generate_question, normalize_answer
from envs.search_qa.real import SAMPLE_CORPUS, SAMPLE_QA, load_corpus, load_qa
from envs.search_qa.retriever import BM25Retriever

SPEC = EnvSpec(name="search_qa", max_steps=4, history_turns=4, format_penalty=0.01, success_reward=1.0,
               task_types=TASK_TYPES)
SPLITS = ("train", "eval_seen", "eval_unseen")
INVALID_ACTION = "Invalid action. Use search[query] or answer[text]."
HELD_OUT_PERCENT = 20
EVAL_SEEN_PERCENT = 10

_WORLDS: dict[tuple, tuple[World, BM25Retriever]] = {}
_REAL: dict[tuple, tuple[list[Question], BM25Retriever]] = {}


def _world(seed: int, top_k: int, sizes: dict) -> tuple[World, BM25Retriever]:
    key = (seed, top_k, tuple(sorted(sizes.items())))
    if key not in _WORLDS:
        if len(_WORLDS) >= 4:
            _WORLDS.pop(next(iter(_WORLDS)))
        world = generate_world(seed, **sizes)
        _WORLDS[key] = (world, BM25Retriever(world.passages, top_k=top_k))
    return _WORLDS[key]


def _real(qa_file, corpus_file, top_k: int) -> tuple[list[Question], BM25Retriever]:
    key = (str(qa_file), str(corpus_file), top_k)
    if key not in _REAL:
        _REAL[key] = (load_qa(qa_file), BM25Retriever(load_corpus(corpus_file), top_k=top_k))
    return _REAL[key]


def parse_action(action: str) -> tuple[str | None, str]:
    """``("search" | "answer", text)`` for a canonical or tag-form action, else ``(None, "")``."""
    text = action.strip()
    low = text.lower()
    for kind in ("search", "answer"):
        if low.startswith(f"{kind}[") and text.endswith("]"):
            return kind, text[len(kind) + 1:-1].strip()
        if low.startswith(f"<{kind}>") and low.endswith(f"</{kind}>"):
            return kind, text[len(kind) + 2:-(len(kind) + 3)].strip()
    return None, ""


class SearchQAEnv(Env):
    """One question per episode; see the module docstring."""

    spec = SPEC

    def __init__(self, split: str, seed: int, retriever: BM25Retriever, *, world: World | None = None,
                 questions: list[Question] | None = None, task_types=TASK_TYPES, max_turns: int = 4,
                 hops: int = 2):
        self.split, self.seed, self.retriever, self.hops = split, seed, retriever, hops
        self.world, self.questions, self.task_types = world, questions, tuple(task_types)
        self.max_turns = max_turns
        self.question: Question | None = None
        self._perm = None
        if questions is not None:
            self._perm = list(range(len(questions)))
            random.Random(f"search_qa-real-{seed}").shuffle(self._perm)
        if world is not None:
            held = lambda e: zlib.crc32(f"{seed}-{e}".encode()) % 100 < HELD_OUT_PERCENT  # noqa: E731
            self._held_out = {e.id for e in world.entities if held(e.id)}

    # ------------------------------------------------------------------ task draws
    def split_of(self, q: Question) -> str:
        """The split a synthetic question belongs to."""
        topics = q.chain[:2] if q.task_type == "comparison" else q.chain[:1]
        if any(t in self._held_out for t in topics):
            return "eval_unseen"
        return "eval_seen" if zlib.crc32(repr(q.key).encode()) % 100 < EVAL_SEEN_PERCENT else "train"

    def draw(self, k: int) -> Question:
        """Question ``k`` of this env's split (deterministic)."""
        if self.questions is not None:
            return self.questions[self._perm[k % len(self.questions)]]
        rng = random.Random(f"search_qa-{self.seed}-{self.split}-{k}")
        task_type = rng.choice(self.task_types)
        for _ in range(100_000):
            q = generate_question(self.world, task_type, rng, self.hops)
            if self.split_of(q) == self.split:
                return q
        raise RuntimeError(f"no {task_type} question found for split {self.split}; the world is too small")

    # ------------------------------------------------------------------ Env API
    def reset(self, seed: int) -> tuple[str, dict[str, Any]]:
        try:
            seed = operator.index(seed)  # int or numpy integer
        except TypeError:
            raise TypeError(f"seed: expected an int, got {type(seed).__name__}") from None
        self.question = self.draw(seed)
        self.turn, self.done, self.won = 0, False, False
        self.searches: list[str] = []
        self.retrieved: set[int] = set()  # passage indices seen so far (= entity ids for generated worlds)
        self.observations: list[str] = []
        return "", self._info()

    def _info(self) -> dict[str, Any]:
        q = self.question
        return {"task": q.question, "task_type": q.task_type, "data_source": q.data_source,
                "admissible_actions": [], "won": self.won, "score": 1.0 if self.won else 0.0,
                "step": self.turn}

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        if self.question is None:
            raise RuntimeError("call reset() before step()")
        if not isinstance(action, str):
            raise TypeError(f"action: expected str, got {type(action).__name__}")
        if self.done:
            return "The episode is over.", 0.0, True, self._info()
        self.turn += 1
        kind, text = parse_action(action)
        reward = 0.0
        if kind == "answer":
            self.won = exact_match(text, self.question.golden_answers)
            reward = SPEC.success_reward if self.won else 0.0
            self.done = True
            obs = ""
        elif kind == "search" and text:
            hits = self.retriever.search(text)
            self.searches.append(text)
            self.retrieved.update(hits)
            obs = self.retriever.information(text)
        else:
            obs = INVALID_ACTION
        self.observations.append(obs)
        if self.turn >= self.max_turns:
            self.done = True
        return obs, reward, self.done, self._info()

    def privileged_hint(self) -> str:
        """The gold chain's entities to search, in order: "Search for: A; B." ("" for real questions)."""
        if self.question is None:
            raise RuntimeError("call reset() before privileged_hint()")
        names = [self.world.name(e) for e in self.question.chain]
        return f"Search for: {'; '.join(names)}." if names else ""

    def expert_action(self) -> str:
        """Search each gold-chain entity not yet retrieved (by its name), then answer.

        The oracle uses the privileged chain to pick its queries but answers only from what it retrieved:
        the first golden answer found (normalised) in the retrieved passages or the question, else
        "unknown". Real questions (no chain) get one search with the question itself."""
        q = self.question
        if q is None:
            raise RuntimeError("call reset() before expert_action()")
        if self.max_turns - self.turn > 1:
            if q.chain:
                for entity in q.chain:
                    name = self.world.name(entity)
                    if entity not in self.retrieved and name not in self.searches:
                        return f"search[{name}]"
            elif not self.searches:
                return f"search[{q.question}]"
        seen = normalize_answer(" ".join([q.question] + [self.retriever.docs[i] for i in sorted(self.retrieved)]))
        found = [g for g in q.golden_answers
                 if normalize_answer(g) and f" {normalize_answer(g)} " in f" {seen} "]
        return f"answer[{found[0] if found else 'unknown'}]"

def make(split: str = "train", seed: int = 0, preset: str = "default", *, task_types=None, top_k: int = 3,
         max_turns: int = SPEC.max_steps, hops: int = 2, qa_file=None, corpus_file=None,
         **size_options) -> SearchQAEnv:
    """Build a Search-QA environment.

    Args:
        split: train / eval_seen / eval_unseen.
        seed: draws the generated world (ignored by real data except for the question order).
        preset: "default" (≥ 2,000 passages) or "small" (≈ 250 short passages).
        task_types: restrict the drawn question kinds (subset of ``TASK_TYPES``).
        top_k: passages returned per search (3).
        max_turns: turns per episode (4, the published setting).
        hops: the longest multihop chain, 2 or 3 (3 needs max_turns >= 4: three searches and the answer).
        qa_file, corpus_file: local real data (both or neither; ``real.SAMPLE_QA`` / ``SAMPLE_CORPUS``
            is the shipped sample).
        size_options: override the preset's entity counts (n_countries, n_cities, n_people,
            n_companies, n_rivers, n_films) or ``style`` ("long" / "short" passages).
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {tuple(PRESETS)}, got {preset!r}")
    if not isinstance(max_turns, int) or max_turns < 1:
        raise ValueError(f"max_turns: expected a positive int, got {max_turns!r}")
    if hops not in (2, 3) or (hops == 3 and max_turns < 4):
        raise ValueError(f"hops: expected 2, or 3 with max_turns >= 4; got hops={hops!r}, max_turns={max_turns}")
    if (qa_file is None) != (corpus_file is None):
        raise ValueError("qa_file, corpus_file: give both or neither")
    if qa_file is not None:
        if size_options or task_types is not None:
            raise ValueError("size_options / task_types: not used with real data (qa_file)")
        questions, retriever = _real(qa_file, corpus_file, top_k)
        return SearchQAEnv(split, seed, retriever, questions=questions, max_turns=max_turns)
    unknown = set(size_options) - set(PRESETS["default"])
    if unknown:
        raise ValueError(f"size_options: unknown {sorted(unknown)}; expected {sorted(PRESETS['default'])}")
    task_types = TASK_TYPES if task_types is None else tuple(task_types)
    if not task_types or any(t not in TASK_TYPES for t in task_types):
        raise ValueError(f"task_types: expected a non-empty subset of {TASK_TYPES}, got {task_types!r}")
    world, retriever = _world(seed, top_k, {**PRESETS[preset], **size_options})
    return SearchQAEnv(split, seed, retriever, world=world, task_types=task_types, max_turns=max_turns,
                       hops=hops)


__all__ = ["INVALID_ACTION", "SAMPLE_CORPUS", "SAMPLE_QA", "SPEC", "SearchQAEnv", "TASK_TYPES", "exact_match",
           "make", "normalize_answer", "parse_action"]
