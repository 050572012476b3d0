"""Shop: a WebShop-like environment on a generated catalogue (the real WebShop files: :mod:`envs.shop.real`).

    import envs
    env = envs.make("shop", split="train", seed=0, preset="small")
    obs, info = env.reset(seed=3)        # info["task"]: "i need a cotton t-shirt with size: m, ..."
    obs, r, done, info = env.step("search[cotton t-shirt]")
    obs, r, done, info = env.step(info["admissible_actions"][-1])   # e.g. "click[p017]"

Actions: ``search[query]`` on the search page, ``click[button]`` for any clickable (case-insensitive).
On the search page ``info["admissible_actions"] == ["search[<your query>]"]``: a *template*, shown to the
policy as is (as verl-agent does); the policy replaces ``<your query>`` with its own words. Elsewhere the
admissible actions are exactly the page's ``click[…]`` buttons.

Reward (WebShop): at Buy Now, ``info["score"]`` = R (see :mod:`envs.shop.reward`), reward 10 iff R == 1;
max 15 steps. Task types = product categories (:data:`TASK_TYPES`); ``eval_unseen`` asks for a held-out
product type in every category (see :mod:`envs.shop.goals`).

Presets (override any field of :class:`ShopConfig` by keyword, e.g. ``results_per_page=5``):
* ``default``: 1,200 products over 10 categories × 4 types, 10 results a page of at most 50 hits, WebShop's
  ``[SEP]`` pages with Description / Features / Reviews.
* ``small``: 160 products, titles = attributes + type, ids ``p000``…, 2 values per option, 3 results a
  page of at most 15, terse pages without detail pages (policy prompts well under 150 words).
"""
from __future__ import annotations

import functools
import numbers
from dataclasses import fields, replace

from envs.base import EnvSpec
from envs.shop.catalogue import CATEGORY_NAMES, Catalogue, generate_catalogue
from envs.shop.env import ShopConfig, ShopEnv
from envs.shop.goals import SPLITS, GeneratedGoals
from envs.shop.search import SearchIndex, index_for

TASK_TYPES = CATEGORY_NAMES
SPEC = EnvSpec(name="shop", max_steps=15, history_turns=2, format_penalty=0.1, success_reward=10.0,
               task_types=TASK_TYPES)
PRESETS = {
    "default": ShopConfig(),
    "small": ShopConfig(n_products=160, results_per_page=3, max_results=15, terse=True, detail_pages=False,
                        short_catalogue=True),
}


@functools.lru_cache(maxsize=8)
def load_world(seed: int, n_products: int, short: bool) -> tuple[Catalogue, SearchIndex]:
    """The catalogue of ``seed`` and its BM25 index, built once per process and shared by all envs."""
    catalogue = generate_catalogue(seed, n_products, short=short)
    return catalogue, index_for(catalogue)


def config_for(preset: str = "default", **size_options) -> ShopConfig:
    """The preset's :class:`ShopConfig` with ``size_options`` replacing fields."""
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    names = {f.name for f in fields(ShopConfig)}
    unknown = sorted(set(size_options) - names)
    if unknown:
        raise ValueError(f"size_options: unknown {unknown}; expected some of {sorted(names)}")
    return replace(PRESETS[preset], **size_options)


def make(split: str = "train", seed: int = 0, preset: str = "default", **size_options) -> ShopEnv:
    """A shop env on ``split`` of the catalogue generated from ``seed`` (see the module doc)."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    seed = int(seed)
    config = config_for(preset, **size_options)
    catalogue, index = load_world(seed, config.n_products, config.short_catalogue)
    return ShopEnv(catalogue, index, GeneratedGoals(catalogue, seed, split), config, SPEC)


__all__ = ["PRESETS", "SPEC", "TASK_TYPES", "ShopConfig", "ShopEnv", "config_for", "load_world", "make"]
