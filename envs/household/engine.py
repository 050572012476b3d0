"""The real ALFWorld text engine: TextWorld's PDDL runtime on the ALFRED domain and grammar.

This is the path ``alfworld.agents.environment.alfred_tw_env`` takes for a ``game.tw-pddl`` file:
``textworld.envs.PddlEnv`` (fast-downward grounds domain + problem; the grammar ``alfred.twl2``
renders feedback and the admissible commands) wrapped by ALFWorld's ``AlfredDemangler`` (PDDL ids →
"cabinet 3"), with the planner expert (``expert_type="planner"``: ``policy_commands`` = a fresh
fast-downward plan from the current state). Unknown commands answer "Nothing happens.".

Costs trimmed without changing what the engine says (the text and commands are the engine's own):
- the planner is asked only when ``plan()`` is called (ALFWorld's expert wrapper re-plans every step),
  and not again while the agent follows its plan (the rest of a plan stays valid in this
  deterministic game); any other command drops the plan and the next call re-plans;
- fast-downward's PDDL→SAS translation and the grammar parse (``GameLogic``) are memoised per exact
  input (small LRUs), so replaying a game (GRPO groups share a seed) skips them; a game whose grammar
  is the shipped ``alfred.twl2`` with its goal sentence filled in reuses one parse of the template;
- TatSu parses of grammar fragments and fact queries (the same template strings at every step) are
  memoised for the duration of each engine call (about half of a step's time).
These memoisations swap module attributes of textworld / fast_downward only inside an engine call,
under a lock. ``fast_downward.pddl2sas`` also overwrites ``sys.argv``; it is restored after each call.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import functools
import re
import sys
import threading
from typing import Any

import fast_downward
import textworld
from alfworld.agents.environment.alfred_tw_env import AlfredDemangler
from textworld.envs import PddlEnv
from textworld.envs.pddl import logic as pddl_logic
from textworld.envs.pddl import textgen
from textworld.logic import Rule

from envs.household.scenes import DOMAIN_PATH, GRAMMAR_PATH

BANNER = "-= Welcome to TextWorld, ALFRED! =-"
NOTHING_HAPPENS = "Nothing happens."
_TRANSLATIONS: collections.OrderedDict[tuple[int, str, bool], Any] = collections.OrderedDict()
_LOGICS: collections.OrderedDict[tuple[int, str], Any] = collections.OrderedDict()
_CACHE_SIZE = 64
# Parsed grammar fragments / queries: a finite set of template strings, parsed once per process.
_FRAGMENTS: dict[tuple, Any] = {}
_QUERIES: dict[str, Any] = {}
_PARSE_FRAGMENT = textgen._parse_and_convert
_QUERY_DESCRIPTOR = Rule.__dict__["parse_conjunctive_query"]
_PARSE_QUERY = Rule.parse_conjunctive_query  # bound to Rule
_LOCK = threading.RLock()


@functools.lru_cache(maxsize=1)
def game_logic() -> tuple[str, str]:
    """(alfred.pddl, alfred.twl2) as shipped in the alfworld package (read once)."""
    return DOMAIN_PATH.read_text(), GRAMMAR_PATH.read_text()


def game_data(problem: str, task: str) -> dict[str, Any]:
    """A ``game.tw-pddl`` dict: domain, grammar with the task sentence, problem (ALFWorld's layout)."""
    domain, grammar = game_logic()
    return {"pddl_domain": domain, "grammar": grammar.replace("UNKNOWN GOAL", task.rstrip(".")),
            "pddl_problem": problem, "solvable": True, "walkthrough": None}


def _lru(cache: collections.OrderedDict, key: Any, build) -> Any:
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    cache[key] = value = build()
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return value


@contextlib.contextmanager
def _memoised_translation():
    """While the engine loads/resets a game, route fast-downward's PDDL→SAS translation and the
    grammar parse (``GameLogic``) through small LRUs keyed by their exact inputs."""
    original, original_logic = fast_downward.pddl2sas, pddl_logic.GameLogic
    argv, argv_items = sys.argv, list(sys.argv)

    def pddl2sas(domain: str, problem: str, verbose: bool = False, optimize: bool = False):
        return _lru(_TRANSLATIONS, (hash(domain), problem, optimize),
                    lambda: original(domain, problem, verbose=verbose, optimize=optimize))

    def game_logic_cached(domain: str, grammar: str):
        return _lru(_LOGICS, (hash(domain), grammar), lambda: _build_logic(original_logic, domain, grammar))

    with _LOCK:
        fast_downward.pddl2sas, pddl_logic.GameLogic = pddl2sas, game_logic_cached
        try:
            with _memoised_text_parsing():
                yield
        finally:
            fast_downward.pddl2sas, pddl_logic.GameLogic = original, original_logic
            argv[:] = argv_items
            sys.argv = argv


_SAFE_SENTENCE = re.compile(r"[^\"\\#\[\]{}|\n]*")


def _build_logic(build, domain: str, grammar: str) -> Any:
    """``GameLogic(domain, grammar)``. A grammar that is the shipped alfred.twl2 with only its goal
    sentence filled in shares one parse of the template; its "task" rule alone is parsed anew."""
    base_domain, template = game_logic()
    head, _, tail = template.partition("UNKNOWN GOAL")
    sentence = grammar[len(head):len(grammar) - len(tail)]
    if (domain != base_domain or len(grammar) < len(head) + len(tail) or not grammar.startswith(head)
            or not grammar.endswith(tail) or not _SAFE_SENTENCE.fullmatch(sentence)):
        return build(domain=domain, grammar=grammar)
    base = _lru(_LOGICS, (hash(domain), template), lambda: build(domain=domain, grammar=template))
    (rule,) = base.grammar._rules["task"]
    logic = copy.copy(base)
    logic.grammar = textgen.ContextSensitiveGrammar()
    logic.grammar._rules.update(base.grammar._rules)
    logic.grammar._rules["task"] = [textgen.ProductionRule(
        lhs="task", rhs=_PARSE_FRAGMENT(f"Your task is to: {sentence}.", rule_name="symbols"),
        weight=rule.weight, condition=rule.condition)]
    return logic


def _parse_fragment(text: str, **kwargs: Any) -> Any:
    key = (text, tuple(sorted(kwargs.items())))
    if key not in _FRAGMENTS:
        if len(_FRAGMENTS) > 20_000:
            _FRAGMENTS.clear()
        _FRAGMENTS[key] = _PARSE_FRAGMENT(text, **kwargs)
    return copy.deepcopy(_FRAGMENTS[key])  # the grammar sets each symbol's context: hand out a copy


def _parse_query(cls: type, expr: str) -> Any:
    if expr not in _QUERIES:
        if len(_QUERIES) > 20_000:
            _QUERIES.clear()
        _QUERIES[expr] = _PARSE_QUERY(expr)
    return _QUERIES[expr]  # read-only: matched against the state, never modified


@contextlib.contextmanager
def _memoised_text_parsing():
    """The grammar re-parses its template strings with TatSu at every derivation (two thirds of a
    step's time); within this context both parsers are memoised on their input string."""
    with _LOCK:
        textgen._parse_and_convert, Rule.parse_conjunctive_query = _parse_fragment, classmethod(_parse_query)
        try:
            yield
        finally:
            textgen._parse_and_convert, Rule.parse_conjunctive_query = _PARSE_FRAGMENT, _QUERY_DESCRIPTOR


class AlfredEngine:
    """One ALFWorld game engine (owns a private copy of fast-downward's library, so engines in one
    process do not share planner state).

    ``load(game)`` takes a ``game.tw-pddl`` dict or path; ``reset()`` → (observation, admissible, won);
    ``step(command)`` → (feedback, admissible, won); ``plan()`` → the planner's command list from the
    current state (``policy_commands``; empty when the goal is unreachable).
    """

    def __init__(self) -> None:
        infos = textworld.EnvInfos(won=True, admissible_commands=True)
        self._env = AlfredDemangler(PddlEnv(infos), shuffle=False)
        self._inner: PddlEnv = self._env.unwrapped
        self._plan: list[str] | None = None
        self._loaded: Any = None

    def load(self, game: dict[str, Any] | str) -> None:
        with _memoised_translation():
            self._env.load(game)
        self._loaded = game

    def reset(self) -> tuple[str, list[str], bool]:
        with _memoised_translation():
            state = self._env.reset()
        self._plan = None
        text = state.feedback
        if text.lstrip().startswith(BANNER):
            text = text.lstrip()[len(BANNER):]
        return text.strip(), list(state["admissible_commands"]), bool(state["won"])

    def step(self, command: str) -> tuple[str, list[str], bool]:
        with _memoised_text_parsing():
            state, _, _ = self._env.step(command)
        plan, accepted = self._plan, state.feedback != NOTHING_HAPPENS
        # The game is deterministic: after the plan's first command, the rest of the plan is still a
        # valid plan from the new state, so the planner is not asked again.
        self._plan = plan[1:] if plan and accepted and command.strip() == plan[0] else None
        return state.feedback.strip(), list(state["admissible_commands"]), bool(state["won"])

    def plan(self) -> list[str]:
        """The planner expert's remaining commands (ALFWorld ``policy_commands``), cached per state
        and advanced while its commands are played."""
        if self._plan is None:
            inner = self._inner
            self._plan = list(inner._pddl_state.replan(inner._entity_infos))
        return self._plan

    def close(self) -> None:
        # The library copy stays mapped (as in TextWorld): unloading it with dlclose crashes the
        # interpreter at exit, so only the references are dropped.
        self._plan = self._loaded = None
