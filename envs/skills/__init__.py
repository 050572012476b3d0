"""Skill retrieval: the teacher's privileged context.

Skills are markdown files ``envs/skills/<env>/general.md`` (principles for every task) and
``envs/skills/<env>/<task_type>.md`` (task-type skills and common mistakes). ``retrieve_skills`` returns
``general.md`` followed by the task-type file(s) chosen by one of the strategies:

- ``task_type``: the file of the (privileged) task type.
- ``keyword``: the task type whose most specific (longest) keyword occurs in the task sentence; ties
  go to the task type listed first in the keyword table (nothing matched → general only). Keywords
  come from the table below, else from an optional first line ``<!-- keywords: a, b, c -->`` of the
  task-type file; the task type's name (and its singular) always counts too.
- ``all``: every task-type file (sorted by name).
- ``random``: a random *other* task type's file (a control; ``rng`` seeds the draw).
- ``similarity``: the task-type file with the highest BM25 score (``bm25s``) against the task sentence.
- ``oracle``: not a retrieval but a control beyond the paper: the task-type file preceded by the
  environment's instance hint (``Env.privileged_hint``: where the objects are, the product to buy, the
  entities to search), knowledge the observation lacks, so the teacher can know more than the student.

Files are read once per directory and cached (``clear_cache()`` forgets them). Skills are never shown
at evaluation; that is the trainer's business.
"""
from __future__ import annotations

import random as _random
import re
from dataclasses import dataclass
from pathlib import Path

SKILL_STRATEGIES = ("task_type", "keyword", "all", "random", "similarity", "oracle")
SKILLS_DIR = Path(__file__).resolve().parent
_ALIASES = {"alfworld": "household", "webshop": "shop"}
_KEYWORD_LINE = re.compile(r"^\s*<!--\s*keywords:(.*?)-->\s*$")

# Task-type keywords per environment, most specific first (earlier wins ties).
KEYWORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "household": {
        "pick_two_obj_and_place": ("two", "both"),
        "look_at_obj_in_light": ("look at", "examine", "desklamp", "under the"),
        "pick_clean_then_place": ("clean",),
        "pick_heat_then_place": ("heat", "hot", "warm"),
        "pick_cool_then_place": ("cool", "cold", "chill"),
        "pick_and_place": ("put", "place", "find"),
    },
    "search_qa": {
        "comparison": ("earlier", "later", "longer", "shorter", "older", "younger", "or"),
        "multihop": ("the founder of", "the director of", "the country where", "which country is",
                     "the company whose"),
        "lookup": ("who founded", "who directed", "capital", "headquarters", "in which city"),
        "attribute": ("in what year", "what year", "born", "released", "how long", "kilometres",
                      "occupation"),
    },
}


@dataclass(frozen=True)
class _SkillSet:
    general: str
    by_type: dict[str, str]  # task type -> text (sorted by task type)
    keywords: dict[str, tuple[str, ...]]  # task type -> keywords (table order first)


_CACHE: dict[tuple[str, str], _SkillSet] = {}
_BM25_CACHE: dict[tuple[str, str], tuple[object, list[str]]] = {}


def clear_cache() -> None:
    """Forget the cached skill files and BM25 indexes."""
    _CACHE.clear()
    _BM25_CACHE.clear()


def _read(path: Path) -> tuple[str, tuple[str, ...]]:
    lines = path.read_text(encoding="utf-8").strip().splitlines()
    keywords: tuple[str, ...] = ()
    if lines:
        match = _KEYWORD_LINE.match(lines[0])
        if match:
            keywords = tuple(k.strip().lower() for k in match.group(1).split(",") if k.strip())
            lines = lines[1:]
    return "\n".join(lines).strip(), keywords


def _load(env_name: str, skills_dir: Path) -> _SkillSet:
    key = (str(skills_dir), env_name)
    if key in _CACHE:
        return _CACHE[key]
    folder = skills_dir / env_name
    if not folder.is_dir():
        raise ValueError(f"env_name: no skill folder {folder}")
    general_path = folder / "general.md"
    general = _read(general_path)[0] if general_path.is_file() else ""
    by_type, file_keywords = {}, {}
    for path in sorted(folder.glob("*.md")):
        if path.stem == "general":
            continue
        by_type[path.stem], file_keywords[path.stem] = _read(path)
    table = KEYWORDS.get(env_name, {})
    keywords = {t: table[t] for t in table if t in by_type}
    for task_type in by_type:
        keywords.setdefault(task_type, file_keywords[task_type])
    for task_type, words in keywords.items():  # the name itself ("phone cases", "phone case") always counts
        name = task_type.replace("_", " ").lower()
        keywords[task_type] = tuple(dict.fromkeys(words + (name, name.removesuffix("s"))))
    _CACHE[key] = skill_set = _SkillSet(general, by_type, keywords)
    return skill_set


def _count(text: str, keyword: str) -> int:
    # Whole-word occurrences (the keyword may contain spaces); re.escape keeps it literal and linear.
    return len(re.findall(r"(?<!\w)" + re.escape(keyword) + r"(?!\w)", text))


def _by_keyword(skill_set: _SkillSet, task: str) -> list[str]:
    # The task type with the most specific (longest) matched keyword wins; ties go to the task type
    # listed first in the keyword table.
    text = " ".join(task.lower().split())
    best, best_len = None, 0
    for task_type, words in skill_set.keywords.items():
        lengths = [len(w.split()) for w in (" ".join(k.split()) for k in words) if w and _count(text, w)]
        if lengths and max(lengths) > best_len:
            best, best_len = task_type, max(lengths)
    return [best] if best is not None else []


def _by_similarity(env_name: str, skills_dir: Path, skill_set: _SkillSet, task: str) -> list[str]:
    import bm25s  # local import: only this strategy needs it

    key = (str(skills_dir), env_name)
    if key not in _BM25_CACHE:
        names = list(skill_set.by_type)
        tokens = bm25s.tokenize([skill_set.by_type[n] for n in names], return_ids=False,
                                show_progress=False)
        model = bm25s.BM25()
        model.index(tokens, show_progress=False)
        _BM25_CACHE[key] = (model, names)
    model, names = _BM25_CACHE[key]
    if not names:
        return []
    query = bm25s.tokenize([task], return_ids=False, show_progress=False)[0]
    if not query:
        return []
    scores = model.get_scores(query)
    best = max(range(len(names)), key=lambda i: (scores[i], -i))  # ties → first by name
    return [names[best]] if scores[best] > 0 else []


def retrieve_skills(env_name: str, *, task: str, task_type: str | None, strategy: str = "task_type",
                    rng: _random.Random | None = None, max_chars: int | None = None,
                    skills_dir: str | Path | None = None, hint: str | None = None) -> str:
    """The skill text for one task.

    Args:
        env_name: the environment (alfworld reads household's skills, webshop shop's).
        task: the task sentence (keyword / similarity strategies read it).
        task_type: the privileged task type (required by ``task_type`` and ``oracle``; ``random`` avoids it).
        strategy: one of ``SKILL_STRATEGIES``.
        rng: the random source of ``random`` (default ``random.Random(0)``).
        max_chars: at most this many characters: the task-type text keeps at least half of the budget,
            general.md the rest; each is cut at a line break where possible.
        skills_dir: the folder holding ``<env>/*.md`` (default: this package's folder).
        hint: the environment's ``privileged_hint()`` (required by ``oracle``, ignored otherwise); kept whole
            ahead of the skill text, which gets what is left of ``max_chars``.
    Returns:
        general.md's text, a blank line, then the chosen task-type file(s) (separated by blank lines);
        ``oracle``: the hint, a blank line, then that text.
    """
    if strategy not in SKILL_STRATEGIES:
        raise ValueError(f"strategy: expected one of {SKILL_STRATEGIES}, got {strategy!r}")
    if not isinstance(task, str):
        raise TypeError(f"task: expected str, got {type(task).__name__}")
    if max_chars is not None and (not isinstance(max_chars, int) or max_chars < 0):
        raise ValueError(f"max_chars: expected a non-negative int or None, got {max_chars!r}")
    env = _ALIASES.get(env_name, env_name)
    root = SKILLS_DIR if skills_dir is None else Path(skills_dir)
    skill_set = _load(env, root)

    if strategy == "oracle" and not isinstance(hint, str):
        raise ValueError(f"hint: the oracle strategy needs the environment's privileged_hint() text, got {hint!r}")
    if strategy in ("task_type", "oracle"):
        if task_type not in skill_set.by_type:
            raise ValueError(f"task_type: expected one of {sorted(skill_set.by_type)}, got {task_type!r}")
        chosen = [task_type]
    elif strategy == "keyword":
        chosen = _by_keyword(skill_set, task)
    elif strategy == "all":
        chosen = list(skill_set.by_type)
    elif strategy == "random":
        others = [t for t in skill_set.by_type if t != task_type] or list(skill_set.by_type)
        chosen = [(rng or _random.Random(0)).choice(others)] if others else []
    else:
        chosen = _by_similarity(env, root, skill_set, task)

    specific = "\n\n".join(skill_set.by_type[t] for t in chosen)
    if strategy != "oracle" or not hint:
        return _join(skill_set.general, specific, max_chars)
    rest = None if max_chars is None else max(max_chars - len(hint) - 2, 0)
    return "\n\n".join(p for p in (hint, _join(skill_set.general, specific, rest)) if p)


def _cut(text: str, budget: int) -> str:
    """``text`` cut to at most ``budget`` characters, at a line break where one is in the second half."""
    if len(text) <= budget:
        return text
    if budget <= 0:
        return ""
    cut = text[:budget]
    newline = cut.rfind("\n")
    return cut[:newline].rstrip() if newline > budget // 2 else cut.rstrip()


def _join(general: str, specific: str, max_chars: int | None) -> str:
    # Under a budget the task-type text keeps at least half of it (it is the more telling part); the
    # general text gets the rest. Each is cut at a line break, so the first (most important) lines stay.
    parts = [p for p in (general, specific) if p]
    text = "\n\n".join(parts)
    if max_chars is None or len(text) <= max_chars:
        return text
    if not general or not specific:
        return _cut(text, max_chars)
    specific = _cut(specific, max(max_chars // 2, max_chars - len(general) - 2))
    general = _cut(general, max_chars - len(specific) - 2)
    return "\n\n".join(p for p in (general, specific) if p)


__all__ = ["KEYWORDS", "SKILLS_DIR", "SKILL_STRATEGIES", "clear_cache", "retrieve_skills"]
