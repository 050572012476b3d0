"""Reply parser and prompt builder: formats, hostile replies, history truncation, the skills prefix."""
from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from envs.parsing import MAX_ACTION_CHARS, Reply, env_action, parse_reply
from envs.prompts import PRIVILEGED_TEMPLATE, build_prompt, with_skills

ACTION_ENVS = ("household", "alfworld", "shop", "webshop")


# --------------------------------------------------------------------------- action format
@pytest.mark.parametrize("env", ACTION_ENVS)
def test_valid_action_reply(env):
    r = parse_reply(env, "<think>the apple is in the fridge</think>\n<action>  go to   fridge 1 </action>")
    assert r == Reply(action="go to fridge 1", valid_format=True, kind="action",
                      think="the apple is in the fridge")


@pytest.mark.parametrize("text, action", [
    ("<action>go to fridge 1</action>", "go to fridge 1"),  # missing think
    ("<think>x</think>go to fridge 1", None),  # missing action tags
    ("<think>x</think><action>go to fridge 1", "go to fridge 1"),  # unclosed action
    ("<think>x<action>open fridge 1</action>", "open fridge 1"),  # unclosed think
    ("<think>x</think><action>a</action><action>b</action>", "a"),  # repeated action
    ("<think>x</think><think>y</think><action>a</action>", "a"),  # repeated think
    ("<action>a</action><think>x</think>", "a"),  # wrong order
    ("<think>x</think><action>   </action>", None),  # empty action
    ("<think>苹果在冰箱里</think><action>go to fridge 1</action>", "go to fridge 1"),  # CJK
    ("<think>x</think><action>go to 冰箱 1</action>", "go to 冰箱 1"),
    ("<think>x</think><action>カメラ</action>", "カメラ"),
    ("<think>x</think><action>냉장고</action>", "냉장고"),
    ("", None),
    ("</action><action>", ""),  # closing before opening: unclosed action with empty text
    ("<think>x<action>a</action></think><action>b</action>", "b"),  # the block after think is preferred
])
def test_invalid_action_replies(text, action):
    r = parse_reply("household", text)
    assert r.valid_format is False and r.kind is None
    assert r.action == (action or None)


def test_action_is_capped_and_whitespace_collapsed():
    r = parse_reply("shop", "<think>t</think><action>" + "click[x] " * 100 + "</action>")
    assert r.valid_format and len(r.action) <= MAX_ACTION_CHARS and "  " not in r.action
    r = parse_reply("household", "<think>t</think><action>go\n\tto\r\nsink 1</action>")
    assert r.action == "go to sink 1"


@pytest.mark.parametrize("payload", [
    "__import__('os').system('rm -rf /')",
    "<script>alert(1)</script>",
    "{{7*7}} ${7*7} `ls` $(ls)",
    "'; DROP TABLE users; --",
    "<action-x>open</action-x> <b>bold</b>",
])
def test_code_and_markup_are_just_text(payload):
    r = parse_reply("household", f"<think>{payload}</think><action>{payload}</action>")
    assert r.think == payload.strip()
    assert r.action == " ".join(payload.split())[:MAX_ACTION_CHARS]
    assert r.valid_format is (payload.count("<action>") == 0 and payload.count("</action>") == 0
                              and payload.count("<think>") == 0 and payload.count("</think>") == 0)


# --------------------------------------------------------------------------- search format
@pytest.mark.parametrize("text, kind, action", [
    ("<think>need the founder</think><search>Varnex Labs founder</search>", "search", "Varnex Labs founder"),
    ("<think>found it</think> <answer> Mira Kouth </answer>", "answer", "Mira Kouth"),
])
def test_valid_search_replies(text, kind, action):
    r = parse_reply("search_qa", text)
    assert (r.valid_format, r.kind, r.action) == (True, kind, action)
    assert env_action("search_qa", r) == f"{kind}[{action}]"


@pytest.mark.parametrize("text", [
    "<think>x</think><search>a</search><answer>b</answer>",  # both
    "<think>x</think><answer>b</answer><search>a</search>",
    "<think>x</think><search>a</search><search>b</search>",  # repeated
    "<search>a</search>",  # no think
    "<think>x</think>",  # no action
    "<think>x</think><action>a</action>",  # the household tag
    "<think>x</think><answer>东京</answer>",  # CJK
    "<think>x</think><answer></answer>",
    "<search>a</search><think>x</think>",
    "<search>a</search><think>x</think><answer>b</answer>",  # both, one before the think block
    "<think>x</think><answer>b</answer></search>",  # a stray closing tag of the other kind
])
def test_invalid_search_replies(text):
    r = parse_reply("search_qa", text)
    assert r.valid_format is False and r.kind is None
    assert env_action("search_qa", r) == r.action  # best effort is passed raw (the env rejects it)


def test_env_action_for_household_is_the_text():
    assert env_action("household", parse_reply("household", "<think>t</think><action>look</action>")) == "look"
    assert env_action("household", parse_reply("household", "nothing")) is None


# --------------------------------------------------------------------------- hostile sizes and types
@pytest.mark.parametrize("text", [
    "<think>" + "a" * 10_000 + "</think><action>look</action>",
    "<think>" * 5_000,
    "<action>" * 3_000 + "</action>" * 3_000,
    "<" * 10_000,
    "<think></think><action>" + "x" * 10_000,
    ("<think>a</think>" + "<search>q</search>" * 500)[:10_000],
])
def test_long_replies_are_fast(text):
    for env in ("household", "search_qa"):
        start = time.perf_counter()
        r = parse_reply(env, text)
        assert time.perf_counter() - start < 0.05
        assert r.action is None or len(r.action) <= MAX_ACTION_CHARS


def test_long_valid_reply_stays_valid():
    r = parse_reply("household", "<think>" + "b" * 10_000 + "</think><action>look</action>")
    assert r.valid_format and r.action == "look" and len(r.think) == 10_000


def test_bad_arguments():
    with pytest.raises(TypeError, match="text"):
        parse_reply("household", None)
    with pytest.raises(ValueError, match="env_name"):
        parse_reply("chess", "<think>x</think><action>e4</action>")


# --------------------------------------------------------------------------- prompts
def _history(n):
    return [(f"obs{i}", f"act{i}") for i in range(n)]


@pytest.mark.parametrize("k", [0, 1, 2, 5])
def test_history_truncated_to_k(k):
    p = build_prompt("household", task="put a clean apple in fridge.", observation="You see a fridge 1.",
                     admissible_actions=["go to fridge 1", "look"], history=_history(6), history_turns=k)
    shown = [i for i in range(6) if f"act{i}" in p]
    assert shown == list(range(6 - k, 6))
    assert all(f"obs{i}" in p for i in shown)
    assert "go to fridge 1 | look" in p and "You see a fridge 1." in p
    assert "<think>" in p and "<action>" in p


def test_default_history_lengths():
    p = build_prompt("shop", task="t", observation="o", admissible_actions=[], history=_history(6))
    assert [i for i in range(6) if f"act{i}" in p] == [4, 5]
    p = build_prompt("search_qa", task="Who founded X?", observation="", admissible_actions=[],
                     history=[("", f"search[q{i}]") for i in range(6)])
    assert [i for i in range(6) if f"<search>q{i}</search>" in p] == [2, 3, 4, 5]
    assert "<answer>" in p and "Who founded X?" in p


def test_search_prompt_shows_results_in_order():
    info1, info2 = "<information>Doc 1: alpha</information>", "<information>Doc 1: beta</information>"
    p = build_prompt("search_qa", task="Q?", observation=info2, admissible_actions=[],
                     history=[("", "search[a]"), (info1, "search[b]")])
    assert p.index("<search>a</search>") < p.index("alpha") < p.index("<search>b</search>") < p.index("beta")


def test_step_numbers_and_task_prefix():
    p = build_prompt("household", task="Your task is to: put a mug in sink.", observation="o",
                     admissible_actions=["look"], history=_history(3), step=10)
    assert "Task: put a mug in sink." in p and "Your task is to" not in p
    assert "[9] Action: act1" in p and "[10] Action: act2" in p and "Step 11." in p


def test_small_prompt_is_short():
    p = build_prompt("household", task="put a clean apple in fridge.", observation="You arrive at sink 1.",
                     admissible_actions=[f"go to cabinet {i}" for i in range(8)], history=_history(2))
    assert len(p.split()) < 120


def test_with_skills_prefix_exact():
    assert PRIVILEGED_TEMPLATE == "[Privileged Skill Information]\n{skills}\n\n"
    assert with_skills("PROMPT", "- skill {a}") == "[Privileged Skill Information]\n- skill {a}\n\nPROMPT"


def test_prompt_bad_arguments():
    with pytest.raises(ValueError, match="env_name"):
        build_prompt("chess", task="t", observation="o", admissible_actions=[], history=[])
    with pytest.raises(ValueError, match="history_turns"):
        build_prompt("shop", task="t", observation="o", admissible_actions=[], history=[], history_turns=-1)
    with pytest.raises(TypeError, match="history"):
        build_prompt("shop", task="t", observation="o", admissible_actions=[], history=["oops"])


# --------------------------------------------------------------------------- fuzzing
_PIECES = st.sampled_from(["<think>", "</think>", "<action>", "</action>", "<search>", "</search>", "<answer>",
                           "</answer>", "go to fridge 1", " ", "\n", "<", ">", "/", "东京", "x" * 50])


@settings(max_examples=300, deadline=None)
@given(st.lists(_PIECES, max_size=12))
def test_fuzz_replies_never_crash(pieces):
    text = "".join(pieces)
    for env in ("household", "search_qa"):
        r = parse_reply(env, text)
        assert r.action is None or 0 < len(r.action) <= MAX_ACTION_CHARS
        if r.valid_format:
            # A valid reply re-parses identically from its canonical rendering.
            tag = "action" if env == "household" else r.kind
            canonical = f"<think>{r.think}</think><{tag}>{r.action}</{tag}>"
            assert parse_reply(env, canonical) == r
            assert "东京" not in text
        else:
            assert r.kind is None
