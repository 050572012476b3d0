"""Synthetic goals in WebShop's style and the split of goals into train / eval_seen / eval_unseen.

A goal is made from a *target* product: its type, 1–3 of its attributes, one value of each of its option
dimensions and a price bound above its price (WebShop's rule: two of the first four multiples of $10 above
the price, the larger one). Any product satisfying the goal scores 1, not only the target.

Splits (all on one shared catalogue):
* ``eval_unseen`` targets the held-out product type of every category (never asked for in training);
* the other products are divided per category, 20 % as ``eval_seen`` targets, 80 % as ``train`` targets,
  so train and eval_seen goals are disjoint (different target products), on the same catalogue.
``GeneratedGoals(catalogue, seed, split).goal(k)`` is a pure function of (catalogue, seed, split, k).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from envs.shop.catalogue import Catalogue, Product

SPLITS = ("train", "eval_seen", "eval_unseen")
EVAL_SEEN_SHARE = 0.2
_LEADS = ("i need", "i am looking for", "i want", "find me", "i would like")


@dataclass(frozen=True)
class Goal:
    """What to buy. ``options`` maps an option dimension to the wanted value (real WebShop human goals
    give a list of values; they are stored as ``{"option 0": v, …}``)."""

    instruction: str
    category: str
    ptype: str
    attributes: tuple[str, ...]
    options: dict[str, str] = field(default_factory=dict)
    price_upper: float = 1e6
    target: str = ""  # the target product id (one product that satisfies the goal)


def price_bound(price: float, rng: random.Random) -> float | None:
    """WebShop's synthetic price bound: two of the first four multiples of 10 above ``price``, the larger;
    None (no bound) when fewer than two exist."""
    above = [10.0 * i for i in range(1, 100) if 10.0 * i > price][:4]
    if len(above) < 2:
        return None
    return max(rng.sample(above, 2))


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def make_goal(product: Product, rng: random.Random) -> Goal:
    """A goal whose target is ``product``."""
    k = rng.randint(1, min(3, len(product.attributes)))
    attrs = tuple(rng.sample(product.attributes, k))
    options = {dim: rng.choice(values) for dim, values in product.options.items()}
    bound = price_bound(product.price, rng)
    lead = rng.choice(_LEADS)
    if rng.random() < 0.5:
        what = _article(attrs[0]) + f" {' '.join(attrs)} {product.ptype}"
    else:
        listed = attrs[0] if len(attrs) == 1 else f"{', '.join(attrs[:-1])} and {attrs[-1]}"
        what = _article(product.ptype) + f" {product.ptype} that is {listed}"
    parts = [f"{lead} {what}"]
    if options:
        parts.append("with " + ", and ".join(f"{d}: {v}" for d, v in options.items()))
    text = " ".join(parts)
    if bound is not None:
        text += f", and price lower than {bound:.2f} dollars"
    return Goal(text, product.category, product.ptype, attrs, options, bound if bound is not None else 1e6,
                product.pid)


def split_pools(catalogue: Catalogue, seed: int) -> dict[str, list[int]]:
    """Target product indices per split (see the module doc)."""
    pools: dict[str, list[int]] = {s: [] for s in SPLITS}
    by_category: dict[str, list[int]] = {}
    for i, p in enumerate(catalogue.products):
        if catalogue.held_out_types.get(p.category) == p.ptype:
            pools["eval_unseen"].append(i)
        else:
            by_category.setdefault(p.category, []).append(i)
    rng = random.Random(f"shop-split/{seed}")
    for _, idx in sorted(by_category.items()):
        idx = idx[:]
        rng.shuffle(idx)
        n_eval = max(1, round(EVAL_SEEN_SHARE * len(idx)))
        pools["eval_seen"].extend(sorted(idx[:n_eval]))
        pools["train"].extend(sorted(idx[n_eval:]))
    return pools


class GeneratedGoals:
    """Goal k of a split: a target drawn from the split's pool, then a goal made from it."""

    def __init__(self, catalogue: Catalogue, seed: int, split: str):
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        self.catalogue, self.seed, self.split = catalogue, seed, split
        self.pool = split_pools(catalogue, seed)[split]
        if not self.pool:
            raise ValueError(f"split: no target products for {split!r}; the catalogue is too small")

    def goal(self, k: int) -> Goal:
        rng = random.Random(f"shop-goal/{self.seed}/{self.split}/{k}")
        return make_goal(self.catalogue.products[rng.choice(self.pool)], rng)
