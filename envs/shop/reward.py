"""The WebShop reward as small pure functions.

    R = r_type · (matched attributes + matched options + [price ≤ bound]) / (|attributes| + |options| + 1)

* An attribute of the goal is matched when ``fuzz.token_set_ratio`` (rapidfuzz, lower-cased, punctuation
  stripped) against one of the bought product's attributes is > 85, or, failing that, when the normalised
  phrase occurs as whole words in the product's title, features or description (WebShop looks for a raw
  substring there; whole words keep "oil free" from matching "foil freezer").
* An option of the goal is matched when one *chosen* option equals it exactly if that option's dimension
  is ``size`` (as WebShop: "7" is not "7.5"), or has token_set_ratio > 85 with it otherwise ("Blue" ~
  "blue"; as in WebShop a value contained in another, "blue" ~ "navy blue", counts). Each goal option
  counts once. Unlike WebShop we do not give option credit for a chosen value that merely appears in the
  title (its substring test lets size "s" match any title with an "s"), nor normalise colour synonyms.
* r_type (our documented stand-in for WebShop's spaCy noun-overlap rule): 1.0 when the bought product has
  the goal's product type; otherwise, with ``title_score`` = share of the goal type's words found in the
  bought title, 0.0 when title_score = 0, 0.5 when the category is the same or title_score > 0.2, else
  0.1.
Success is R == 1 exactly (every term matched, right type).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from rapidfuzz import fuzz, utils

FUZZY_THRESHOLD = 85.0
EXACT_MATCH_OPTIONS = ("size",)  # option dimensions matched exactly (WebShop's EXACT_MATCH_OPTS)
_WORD = re.compile(r"[a-z0-9]+")


def normalise(text: str) -> str:
    """Lower case, non-alphanumerics to spaces, single spaces."""
    return " ".join(_WORD.findall(text.lower()))


def fuzzy_match(a: str, b: str) -> bool:
    """WebShop's fuzzy equality: token_set_ratio > 85 on normalised strings."""
    return fuzz.token_set_ratio(a, b, processor=utils.default_process) > FUZZY_THRESHOLD


def count_attribute_matches(goal_attributes: Sequence[str], product_attributes: Iterable[str],
                            product_text: str) -> int:
    """How many goal attributes the product has (fuzzy against its attributes, else whole words of
    ``product_text``: its title, features and description)."""
    product_attributes = list(product_attributes)
    text = f" {normalise(product_text)} "
    n = 0
    for g in goal_attributes:
        if any(fuzzy_match(g, p) for p in product_attributes):
            n += 1
        elif normalise(g) and f" {normalise(g)} " in text:
            n += 1
    return n


def option_matches(goal_value: str, dimension: str, chosen_value: str) -> bool:
    """Does the value chosen on ``dimension`` satisfy the wanted ``goal_value``?"""
    if dimension.lower() in EXACT_MATCH_OPTIONS:
        return normalise(goal_value) == normalise(chosen_value)
    return fuzzy_match(goal_value, chosen_value)


def count_option_matches(goal_options: Sequence[str], chosen_options: Mapping[str, str]) -> int:
    """How many wanted option values were chosen (``chosen_options``: dimension -> chosen value)."""
    return sum(any(option_matches(g, d, v) for d, v in chosen_options.items()) for g in goal_options)


def type_reward(goal_type: str, goal_category: str, product_type: str, product_category: str,
                product_title: str) -> float:
    """r_type: 1 same type; else by the share of goal-type words in the title (see the module doc)."""
    if normalise(goal_type) == normalise(product_type):
        return 1.0
    words = set(normalise(goal_type).split())
    title_words = set(normalise(product_title).split())
    title_score = len(words & title_words) / len(words) if words else 0.2
    if title_score == 0.0:
        return 0.0
    if goal_category == product_category or title_score > 0.2:
        return 0.5
    return 0.1


def shop_reward(*, goal_type: str, goal_category: str, goal_attributes: Sequence[str],
                goal_options: Sequence[str], price_upper: float, product_type: str,
                product_category: str, product_title: str, product_attributes: Sequence[str],
                product_price: float, chosen_options: Mapping[str, str],
                product_text: str = "") -> tuple[float, dict]:
    """The WebShop score R in [0, 1] and its parts (r_type, attribute/option matches, price_ok).

    ``goal_options``: wanted values; ``chosen_options``: dimension -> the value clicked; ``product_text``:
    features + description (searched, with the title, for attributes missing from the attribute list).
    """
    n_attr = count_attribute_matches(goal_attributes, product_attributes, f"{product_title} {product_text}")
    n_opt = count_option_matches(goal_options, chosen_options)
    price_ok = product_price <= price_upper
    r_type = type_reward(goal_type, goal_category, product_type, product_category, product_title)
    total = (n_attr + n_opt + int(price_ok)) / (len(goal_attributes) + len(goal_options) + 1)
    parts = {"r_type": r_type, "attr_matches": n_attr, "option_matches": n_opt, "price_ok": price_ok,
             "n_attributes": len(goal_attributes), "n_options": len(goal_options)}
    return r_type * total, parts


def goal_option_values(goal_options: Mapping[str, str] | Sequence[str]) -> list[str]:
    """Goal options as a list of values (generated goals use a dict dim -> value; WebShop's human goals a
    list)."""
    if isinstance(goal_options, Mapping):
        return [str(v) for v in goal_options.values()]
    return [str(v) for v in goal_options]
