"""Skill retrieval: each strategy on a tiny temporary skill folder and on the shipped markdown files."""
from __future__ import annotations

import random

import pytest

from envs.skills import SKILL_STRATEGIES, SKILLS_DIR, clear_cache, retrieve_skills

TINY = {
    "general.md": "# General\nRead the room before acting.",
    "heat.md": "# Heat\nHeat the object in the microwave, then put the hot object in its place.",
    "cool.md": "<!-- keywords: cool, chill, cold -->\n# Cool\nCool the object in the fridge before placing it.",
    "clean.md": "# Clean\nRinse the object in the sink basin to clean it.",
}


@pytest.fixture()
def tiny(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    for name, text in TINY.items():
        (folder / name).write_text(text, encoding="utf-8")
    clear_cache()
    yield tmp_path
    clear_cache()


def _get(tiny, strategy, task="put a hot apple in fridge.", task_type="heat", **kw):
    return retrieve_skills("toy", task=task, task_type=task_type, strategy=strategy, skills_dir=tiny, **kw)


def test_task_type_strategy(tiny):
    text = _get(tiny, "task_type")
    assert text == TINY["general.md"] + "\n\n" + TINY["heat.md"]
    with pytest.raises(ValueError, match="task_type"):
        _get(tiny, "task_type", task_type="boil")


def test_all_strategy_sorted(tiny):
    text = _get(tiny, "all")
    assert text == "\n\n".join([TINY["general.md"], TINY["clean.md"], TINY["cool.md"].split("\n", 1)[1],
                                TINY["heat.md"]])
    assert "keywords" not in text  # the keyword line is metadata, not skill text


def test_keyword_strategy(tiny):
    assert "# Cool" in _get(tiny, "keyword", task="chill some lettuce and put it in the counter.")
    assert "# Clean" in _get(tiny, "keyword", task="clean some mug and put it in cabinet.")
    assert _get(tiny, "keyword", task="go north.") == TINY["general.md"]  # nothing matched


def test_random_strategy_is_seeded_and_avoids_the_true_type(tiny):
    draws = [_get(tiny, "random", rng=random.Random(s)) for s in range(30)]
    assert all("# Heat" not in d for d in draws)
    assert {("# Cool" in d, "# Clean" in d) for d in draws} == {(True, False), (False, True)}
    assert draws == [_get(tiny, "random", rng=random.Random(s)) for s in range(30)]
    assert _get(tiny, "random") == _get(tiny, "random")  # default rng is fixed


def test_similarity_strategy(tiny):
    assert "# Heat" in _get(tiny, "similarity", task="heat some egg in the microwave.", task_type=None)
    assert "# Clean" in _get(tiny, "similarity", task="rinse a plate in the sink basin.", task_type=None)
    assert _get(tiny, "similarity", task="zzz qqq", task_type=None) == TINY["general.md"]


def test_max_chars(tiny):
    full = _get(tiny, "task_type")
    assert _get(tiny, "task_type", max_chars=len(full)) == full
    for budget in (0, 1, 20, 50, 70, len(full) - 1):
        cut = _get(tiny, "task_type", max_chars=budget)
        assert len(cut) <= budget
    cut = _get(tiny, "task_type", max_chars=60)  # the task-type text keeps at least half the budget
    assert cut.startswith("# General") and "# Heat" in cut


def test_max_chars_on_shipped_files():
    for budget in (200, 400):
        for task_type, heading in HEADINGS.items():
            text = retrieve_skills("search_qa", task="q", task_type=task_type, max_chars=budget)
            assert len(text) <= budget and heading in text and text.startswith("# Search-QA")


def test_files_are_cached(tiny):
    first = _get(tiny, "task_type")
    (tiny / "toy" / "heat.md").write_text("# changed", encoding="utf-8")
    assert _get(tiny, "task_type") == first  # read once
    clear_cache()
    assert _get(tiny, "task_type").endswith("# changed")


def test_oracle_strategy_puts_the_hint_first_and_keeps_it_whole(tiny):
    hint = "apple 1 is at fridge 1."
    assert _get(tiny, "oracle", hint=hint) == hint + "\n\n" + TINY["general.md"] + "\n\n" + TINY["heat.md"]
    cut = _get(tiny, "oracle", hint=hint, max_chars=70)
    assert cut.startswith(hint + "\n\n# General") and len(cut) <= 70
    assert _get(tiny, "oracle", hint=hint, max_chars=10) == hint  # the hint is never cut
    assert _get(tiny, "oracle", hint="") == _get(tiny, "task_type")  # nothing privileged to add
    with pytest.raises(ValueError, match="hint"):
        _get(tiny, "oracle")
    with pytest.raises(ValueError, match="task_type"):
        _get(tiny, "oracle", task_type="boil", hint=hint)


def test_unknown_strategy_lists_valid_ones(tiny):
    with pytest.raises(ValueError) as err:
        _get(tiny, "embedding")
    assert all(s in str(err.value) for s in SKILL_STRATEGIES)


def test_missing_env_folder(tiny):
    with pytest.raises(ValueError, match="env_name"):
        retrieve_skills("nowhere", task="t", task_type=None, strategy="all", skills_dir=tiny)


# --------------------------------------------------------------------------- the shipped files
SEARCH_CASES = [
    ("Who founded Varnex Labs?", "lookup"),
    ("In what year was Mira Kouth born?", "attribute"),
    ("How long is the Kix River in kilometres?", "attribute"),
    ("In which country was the founder of Varnex Labs born?", "multihop"),
    ("In what year was the director of The Tova Garden born?", "multihop"),
    ("Which was founded earlier, Varnex Labs or Tovi Foods?", "comparison"),
    ("Who was born earlier, Mira Kouth or Talo Brei?", "comparison"),
]
HEADINGS = {"lookup": "# Direct lookup", "attribute": "# Entity attribute", "multihop": "# Multi-hop",
            "comparison": "# Comparison"}


@pytest.mark.parametrize("task, task_type", SEARCH_CASES)
def test_search_qa_keyword_strategy(task, task_type):
    text = retrieve_skills("search_qa", task=task, task_type=None, strategy="keyword")
    assert [t for t, h in HEADINGS.items() if h in text] == [task_type]


def test_search_qa_task_type_and_all():
    general = (SKILLS_DIR / "search_qa" / "general.md").read_text(encoding="utf-8").strip()
    for task_type, heading in HEADINGS.items():
        text = retrieve_skills("search_qa", task="q", task_type=task_type)
        assert text.startswith(general) and heading in text
        assert sum(h in text for h in HEADINGS.values()) == 1
    assert all(h in retrieve_skills("search_qa", task="q", task_type=None, strategy="all")
               for h in HEADINGS.values())


def test_search_qa_similarity_telling_sentences():
    for task, task_type in [("Which was founded earlier and which later?", "comparison"),
                            ("the occupation of the founder: search the bridge entity first", "multihop")]:
        text = retrieve_skills("search_qa", task=task, task_type=None, strategy="similarity")
        assert HEADINGS[task_type] in text


def test_every_shipped_skill_folder():
    """Every env folder present (search_qa, shop, household, ...) loads; task_type returns its own file."""
    folders = sorted(p for p in SKILLS_DIR.iterdir() if p.is_dir() and (p / "general.md").is_file())
    assert "search_qa" in [f.name for f in folders]
    for folder in folders:
        general = (folder / "general.md").read_text(encoding="utf-8").strip()
        types = sorted(p.stem for p in folder.glob("*.md") if p.stem != "general")
        assert types, folder
        for task_type in types:
            text = retrieve_skills(folder.name, task="t", task_type=task_type)
            last_line = (folder / f"{task_type}.md").read_text(encoding="utf-8").strip().splitlines()[-1]
            assert text.startswith(general) and text.endswith(last_line)
        for strategy in SKILL_STRATEGIES:
            assert retrieve_skills(folder.name, task="put it there", task_type=types[0], strategy=strategy,
                                   rng=random.Random(0), hint="").startswith(general)
