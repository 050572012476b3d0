"""The shop environment: WebShop's page flow over a catalogue, driven by ``search[…]`` / ``click[…]``.

Pages: search → results (``results_per_page`` of at most ``max_results`` BM25 hits; Back to Search,
< Prev, Next >, product ids) → item (option buttons, Description / Features / Reviews, Buy Now, < Prev)
→ detail (< Prev). Actions are case-insensitive; ``search[q]`` works on the search page only; ``click[x]``
needs ``x`` to be a clickable of the current page. Anything else (including non-strings) is an invalid
action: the page is unchanged, a short message is appended, the step still counts.
Buy Now ends the episode with ``info["score"]`` = the WebShop score R and reward ``success_reward`` iff
R == 1 (else 0); reaching ``max_steps`` without buying ends it with score 0.
"""
from __future__ import annotations

import numbers
import re
from dataclasses import dataclass
from typing import Any

from envs.base import Env, EnvSpec
from envs.shop import pages
from envs.shop.catalogue import Catalogue, Product
from envs.shop.goals import Goal
from envs.shop.reward import goal_option_values, normalise, option_matches, shop_reward
from envs.shop.search import SearchIndex

MAX_ACTION_CHARS = 20_000  # longer strings are invalid actions (search queries are cut at 300 chars)
INVALID_MESSAGE = "Invalid action: not available on this page."
_ACTION = re.compile(r"(search|click)\[(.*)\]", re.DOTALL)


@dataclass(frozen=True)
class ShopConfig:
    """Size and rendering knobs (see ``PRESETS`` in :mod:`envs.shop`)."""

    n_products: int = 1200
    results_per_page: int = 10
    max_results: int = 50
    terse: bool = False  # short one-line-per-element pages (small preset)
    detail_pages: bool = True  # item pages offer Description / Features / Reviews
    short_catalogue: bool = False  # p000-style ids, titles = attributes + type, 2 values per option

    def __post_init__(self) -> None:
        for name in ("n_products", "results_per_page", "max_results"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        for name in ("terse", "detail_pages", "short_catalogue"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected a bool, got {getattr(self, name)!r}")


def option_choice(product: Product, goal_values: list[str]) -> dict[str, str]:
    """For each wanted value, the product's option (dim -> value) that matches it (exact first, then
    fuzzy); values the product lacks are skipped."""
    chosen: dict[str, str] = {}
    for g in goal_values:
        exact = [(d, v) for d, vals in product.options.items() for v in vals if normalise(v) == normalise(g)]
        fuzzy = [(d, v) for d, vals in product.options.items() for v in vals if option_matches(g, d, v)]
        hit = (exact or fuzzy or [None])[0]
        if hit is not None and hit[0] not in chosen:
            chosen[hit[0]] = hit[1]
    return chosen


class ShopEnv(Env):
    """One shop game per ``reset(seed)``; goals come from ``goals.goal(seed)``."""

    def __init__(self, catalogue: Catalogue, index: SearchIndex, goals: Any, config: ShopConfig,
                 spec: EnvSpec):
        self.catalogue, self.index, self.goals, self.config, self.spec = catalogue, index, goals, config, spec
        self.goal: Goal | None = None

    # --- episode -----------------------------------------------------------------------------------
    def reset(self, seed: int) -> tuple[str, dict[str, Any]]:
        if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
            raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
        self.goal = self.goals.goal(int(seed))
        self._goal_values = goal_option_values(self.goal.options)
        self.page, self.query, self.results, self.page_no = "search", "", [], 1
        self.item: int | None = None
        self.detail = ""
        self.chosen: dict[str, str] = {}
        self.steps, self.done, self.score, self.parts = 0, False, 0.0, None
        self._achievable: dict[int, tuple[float, dict[str, str]]] = {}
        self._expert_query: str | None = None
        text, _ = self._render()
        return text, self._info(invalid=False)

    def step(self, action: str) -> tuple[str, float, bool, dict[str, Any]]:
        if self.goal is None:
            raise RuntimeError("step() called before reset()")
        if self.done:
            text, _ = self._render()
            return text, 0.0, True, self._info(invalid=True)
        self.steps += 1
        ok = self._apply(action)
        reward = 0.0
        if self.done:  # bought
            reward = self.spec.success_reward if self.score == 1.0 else 0.0
        elif self.steps >= self.spec.max_steps:
            self.done = True
        text, _ = self._render()
        if not ok:
            text += "\n" + INVALID_MESSAGE
        return text, reward, self.done, self._info(invalid=not ok)

    def _apply(self, action: Any) -> bool:
        """Play ``action``; False (and nothing changes) when it is not available."""
        if not isinstance(action, str) or len(action) > MAX_ACTION_CHARS:
            return False
        m = _ACTION.fullmatch(action.strip().lower())
        if m is None:
            return False
        kind, arg = m.group(1), " ".join(m.group(2).split())
        if kind == "search":
            if self.page != "search" or not arg:
                return False
            self.query = arg
            self.results = self.index.search(arg, self.config.max_results)
            self.page, self.page_no = "results", 1
            return True
        _, clickables = self._render()
        if arg not in clickables:
            return False
        if arg == pages.BACK:
            self.page, self.item, self.chosen = "search", None, {}
        elif self.page == "results":
            if arg == pages.NEXT:
                self.page_no += 1
            elif arg == pages.PREV:
                self.page_no -= 1
            else:
                self.page, self.item, self.chosen = "item", self.catalogue.index_of(arg), {}
        elif self.page == "item":
            product = self.catalogue.products[self.item]
            if arg == pages.PREV:
                self.page, self.chosen = "results", {}
            elif arg in pages.DETAILS:
                self.page, self.detail = "detail", arg
            elif arg == pages.BUY:
                self._buy(product)
            else:
                dim = next(d for d, vals in product.options.items() if arg in vals)
                self.chosen[dim] = arg
        elif self.page == "detail" and arg == pages.PREV:
            self.page = "item"
        return True

    def _buy(self, product: Product) -> None:
        self.score, self.parts = self._score(product, self.chosen)
        self.done = True

    def _score(self, product: Product, chosen: dict[str, str]) -> tuple[float, dict]:
        g = self.goal
        return shop_reward(goal_type=g.ptype, goal_category=g.category, goal_attributes=g.attributes,
                           goal_options=self._goal_values, price_upper=g.price_upper,
                           product_type=product.ptype, product_category=product.category,
                           product_title=product.title, product_attributes=product.attributes,
                           product_price=product.price, chosen_options=chosen,
                           product_text=self._product_text(product))

    @staticmethod
    def _product_text(product: Product) -> str:
        return " ".join((*product.features, product.description))

    # --- rendering ---------------------------------------------------------------------------------
    def _n_pages(self) -> int:
        rpp = self.config.results_per_page
        return max(1, -(-len(self.results) // rpp))

    def _render(self) -> tuple[str, list[str]]:
        terse = self.config.terse
        if self.page == "search":
            return pages.search_page(terse=terse)
        if self.page == "results":
            rpp = self.config.results_per_page
            shown = self.results[(self.page_no - 1) * rpp: self.page_no * rpp]
            return pages.results_page([self.catalogue.products[i] for i in shown], page=self.page_no,
                                      n_pages=self._n_pages(), total=len(self.results), terse=terse)
        product = self.catalogue.products[self.item]
        if self.page == "item":
            return pages.item_page(product, self.chosen, detail_pages=self.config.detail_pages, terse=terse)
        return pages.detail_page(product, self.detail, terse=terse)

    def admissible_actions(self) -> list[str]:
        if self.done:
            return []
        if self.page == "search":
            return [pages.SEARCH_ACTION]
        return [f"click[{c}]" for c in self._render()[1]]

    def _info(self, *, invalid: bool) -> dict[str, Any]:
        g = self.goal
        return {"task": g.instruction, "task_type": g.category, "admissible_actions": self.admissible_actions(),
                "won": self.done and self.score == 1.0, "score": float(self.score), "step": self.steps,
                "page": self.page, "invalid": invalid, "reward_parts": self.parts}

    # --- the oracle --------------------------------------------------------------------------------
    def achievable(self, i: int) -> tuple[float, dict[str, str]]:
        """The best score product ``i`` can give for this goal, and the options that reach it."""
        if i not in self._achievable:
            product = self.catalogue.products[i]
            chosen = option_choice(product, self._goal_values)
            self._achievable[i] = (self._score(product, chosen)[0], chosen)
        return self._achievable[i]

    def _first_good(self, results: list[int]) -> int | None:
        return next((pos for pos, i in enumerate(results) if self.achievable(i)[0] == 1.0), None)

    def _plan_query(self) -> str:
        """Search with the goal's key words (attributes + type); when no satisfying product is reachable
        within the remaining steps, the oracle falls back on the target's title."""
        g = self.goal
        candidates = [f"{' '.join(g.attributes)} {g.ptype}"]
        target = self.catalogue.index_of(g.target)
        if target is not None:
            candidates.append(f"{self.catalogue.products[target].title} {g.ptype}")
        left = self.spec.max_steps - self.steps
        for q in candidates:
            results = self.index.search(q, self.config.max_results)
            pos = self._first_good(results)
            if pos is not None:
                i = results[pos]
                cost = 3 + pos // self.config.results_per_page + len(self.achievable(i)[1])
                if cost <= left:
                    return q
        return candidates[0]

    def privileged_hint(self) -> str:
        """The target product: "The product to buy: p007 (red cotton t-shirt)." ("" where the goal has none)."""
        if self.goal is None:
            raise RuntimeError("privileged_hint() called before reset()")
        i = self.catalogue.index_of(self.goal.target) if self.goal.target else None
        if i is None:
            return ""
        return f"The product to buy: {self.goal.target} ({self.catalogue.products[i].title})."

    def expert_action(self) -> str:
        if self.goal is None:
            raise RuntimeError("expert_action() called before reset()")
        if self.done:
            return f"click[{pages.BACK}]"
        if self.page == "search":
            self._expert_query = self._plan_query()
            return f"search[{self._expert_query}]"
        if self.page == "detail":
            return f"click[{pages.PREV}]"
        pos = self._target_pos()
        if self.page == "item":
            score, chosen = self.achievable(self.item)
            if score == 1.0 or (pos is not None and self.results[pos] == self.item):
                for dim, value in chosen.items():
                    if self.chosen.get(dim) != value:
                        return f"click[{value}]"
                return f"click[{pages.BUY}]"
            return f"click[{pages.PREV}]" if pos is not None else f"click[{pages.BACK}]"
        if pos is None:
            return f"click[{pages.BACK}]"
        want_page = pos // self.config.results_per_page + 1
        if want_page > self.page_no:
            return f"click[{pages.NEXT}]"
        if want_page < self.page_no:
            return f"click[{pages.PREV}]"
        return f"click[{self.catalogue.products[self.results[pos]].pid}]"

    def _target_pos(self) -> int | None:
        """Where in the current results the oracle heads: the first satisfying product; on the oracle's own
        query without one, the best-scoring product; otherwise None (search again)."""
        pos = self._first_good(self.results)
        if pos is not None or not self.results or self._expert_query is None:
            return pos
        if self.query != " ".join(self._expert_query.lower().split()):
            return None
        scores = [self.achievable(i)[0] for i in self.results]
        return scores.index(max(scores))
