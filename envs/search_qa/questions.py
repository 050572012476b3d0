"""Questions over a generated world, and the exact-match scoring.

Kinds (``task_type``) and the public datasets they imitate (``data_source``):

- ``lookup`` (nq-like): one relation of one entity — "Who founded Varnex Labs?"
- ``attribute`` (popqa/triviaqa-like): a literal fact — "In what year was Mira Kouth born?"
- ``multihop`` (hotpotqa/2wiki/musique-like, 2 hops): "In which country was the founder of X born?";
  with ``hops=3`` also 3-hop questions ("What is the capital of the country where the founder of X was
  born?")
- ``comparison`` (hotpotqa/2wiki comparison): "Which was founded earlier, X or Y?"

Each question carries its gold ``chain``: the entities whose passages hold the needed facts, in the
order a searcher needs them (the expert searches them one by one).
"""
from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass

from envs.search_qa.corpus import World

TASK_TYPES = ("lookup", "attribute", "multihop", "comparison")
DATA_SOURCES = {"lookup": "synthetic_nq", "attribute": "synthetic_popqa", "multihop": "synthetic_hotpotqa",
                "comparison": "synthetic_2wiki"}


@dataclass(frozen=True)
class Question:
    question: str
    golden_answers: tuple[str, ...]
    task_type: str
    data_source: str
    chain: tuple[int, ...]  # entity ids to search, in order (empty for real data)
    key: tuple  # identifies the question (template and entities); decides its split


# --------------------------------------------------------------------------- scoring (SQuAD)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation, drop articles (a/an/the), collapse whitespace."""
    if not isinstance(text, str):
        raise TypeError(f"text: expected str, got {type(text).__name__}")
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, golden_answers) -> bool:
    """True iff the normalised prediction equals one normalised golden answer."""
    if isinstance(golden_answers, str):
        golden_answers = [golden_answers]
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(g) for g in golden_answers)


# --------------------------------------------------------------------------- generation
def _years(value: int) -> tuple[str, ...]:
    return (str(value),)


def _lookup(world: World, rng: random.Random) -> Question:
    template = rng.randrange(4)
    if template == 0:
        c = world.entities[rng.choice(world.by_kind["company"])]
        text, ans = f"Who founded {c.name}?", world.name(c.attrs["founder"])
    elif template == 1:
        c = world.entities[rng.choice(world.by_kind["film"])]
        text, ans = f"Who directed {c.name}?", world.name(c.attrs["director"])
    elif template == 2:
        c = world.entities[rng.choice(world.by_kind["country"])]
        text, ans = f"What is the capital of {c.name}?", world.name(c.attrs["capital"])
    else:
        c = world.entities[rng.choice(world.by_kind["company"])]
        text, ans = f"In which city is the headquarters of {c.name}?", world.name(c.attrs["hq"])
    return Question(text, (ans,), "lookup", DATA_SOURCES["lookup"], (c.id,), ("lookup", template, c.id))


def _attribute(world: World, rng: random.Random) -> Question:
    template = rng.randrange(5)
    if template == 0:
        e = world.entities[rng.choice(world.by_kind["person"])]
        text, answers = f"In what year was {e.name} born?", _years(e.attrs["born"])
    elif template == 1:
        e = world.entities[rng.choice(world.by_kind["company"])]
        text, answers = f"In what year was {e.name} founded?", _years(e.attrs["founded"])
    elif template == 2:
        e = world.entities[rng.choice(world.by_kind["river"])]
        n = e.attrs["length"]
        text = f"How long is the {e.name} in kilometres?"
        answers = (str(n), f"{n} km", f"{n} kilometres", f"{n:,}", f"{n:,} km", f"{n:,} kilometres")
    elif template == 3:
        e = world.entities[rng.choice(world.by_kind["person"])]
        text, answers = f"What is the occupation of {e.name}?", (e.attrs["occupation"],)
    else:
        e = world.entities[rng.choice(world.by_kind["film"])]
        text, answers = f"In what year was {e.name} released?", _years(e.attrs["year"])
    return Question(text, tuple(dict.fromkeys(answers)), "attribute", DATA_SOURCES["attribute"], (e.id,),
                    ("attribute", template, e.id))


def _multihop(world: World, rng: random.Random, hops: int = 2) -> Question:
    template = rng.randrange(5 if hops == 2 else 7)
    if template >= 5:  # 3 hops: company/film -> person -> country
        if template == 5:
            c = world.entities[rng.choice(world.by_kind["company"])]
            person = world.entities[c.attrs["founder"]]
            country = world.entities[person.attrs["birth_country"]]
            text = f"What is the capital of the country where the founder of {c.name} was born?"
            ans = world.name(country.attrs["capital"])
        else:
            c = world.entities[rng.choice(world.by_kind["film"])]
            person = world.entities[c.attrs["director"]]
            country = world.entities[person.attrs["birth_country"]]
            text = f"In what year did the country where the director of {c.name} was born become independent?"
            ans = str(country.attrs["independence"])
        return Question(text, (ans,), "multihop", DATA_SOURCES["multihop"], (c.id, person.id, country.id),
                        ("multihop", template, c.id))
    if template in (0, 1, 2):
        c = world.entities[rng.choice(world.by_kind["company"])]
        if template == 0:
            bridge = world.entities[c.attrs["founder"]]
            text = f"In which country was the founder of {c.name} born?"
            ans = world.name(bridge.attrs["birth_country"])
        elif template == 1:
            bridge = world.entities[c.attrs["founder"]]
            text, ans = f"What is the occupation of the founder of {c.name}?", bridge.attrs["occupation"]
        else:
            bridge = world.entities[c.attrs["hq"]]
            text = f"In which country is the headquarters of {c.name}?"
            ans = world.name(bridge.attrs["country"])
    elif template == 3:
        c = world.entities[rng.choice(world.by_kind["film"])]
        bridge = world.entities[c.attrs["director"]]
        text, ans = f"In what year was the director of {c.name} born?", str(bridge.attrs["born"])
    else:
        c = world.entities[rng.choice(world.by_kind["person"])]
        bridge = world.entities[c.attrs["birth_country"]]
        text = f"What is the capital of the country where {c.name} was born?"
        ans = world.name(bridge.attrs["capital"])
    return Question(text, (ans,), "multihop", DATA_SOURCES["multihop"], (c.id, bridge.id),
                    ("multihop", template, c.id))


_COMPARISONS = (
    ("company", "founded", "Which was founded earlier, {a} or {b}?", min),
    ("person", "born", "Who was born earlier, {a} or {b}?", min),
    ("river", "length", "Which river is longer, the {a} or the {b}?", max),
    ("film", "year", "Which film was released earlier, {a} or {b}?", min),
)


def _comparison(world: World, rng: random.Random) -> Question:
    template = rng.randrange(len(_COMPARISONS))
    kind, attr, pattern, pick = _COMPARISONS[template]
    for _ in range(1000):
        a, b = (world.entities[i] for i in rng.sample(world.by_kind[kind], 2))
        if a.attrs[attr] != b.attrs[attr]:
            break
    else:
        raise RuntimeError(f"no two {kind} entities differ in {attr}; the world is too small")
    winner = pick((a, b), key=lambda e: e.attrs[attr])
    answers = (winner.name,)
    if kind == "river":
        answers += (winner.name.removesuffix(" River"),)
    return Question(pattern.format(a=a.name, b=b.name), answers, "comparison", DATA_SOURCES["comparison"],
                    (a.id, b.id), ("comparison", template, a.id, b.id))


_GENERATORS = {"lookup": _lookup, "attribute": _attribute, "multihop": _multihop, "comparison": _comparison}


def generate_question(world: World, task_type: str, rng: random.Random, hops: int = 2) -> Question:
    """One question of ``task_type`` drawn with ``rng``; ``hops`` = 3 adds 3-hop multihop templates
    (drawn 2 times in 7)."""
    if task_type not in _GENERATORS:
        raise ValueError(f"task_type: expected one of {TASK_TYPES}, got {task_type!r}")
    if hops not in (2, 3):
        raise ValueError(f"hops: expected 2 or 3, got {hops!r}")
    if task_type == "multihop":
        return _multihop(world, rng, hops)
    return _GENERATORS[task_type](world, rng)
