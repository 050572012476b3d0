"""The real WebShop data through the shop interface (``envs.make("webshop", ...)``).

Needs the files of WebShop's ``data/`` folder in ``data_dir`` or ``$WEBSHOP_DATA``:

* products: ``items_shuffle_1000.json`` (or ``items_shuffle.json``): a list of
  ``{"asin", "name", "category", "query", "product_category", "pricing": "$12.99" | "$5.00 - $9.00",
  "full_description", "small_description": [str] | str, "customization_options": {name: [{"value"}]}}``;
* attributes and synthetic instructions: ``items_ins_v2_1000.json`` (or ``items_ins_v2.json``):
  ``{asin: {"attributes": [str], "instruction": str, "instruction_attributes": [str]}}``;
* optional human goals: ``items_human_ins.json``: ``{asin: [{"instruction", "instruction_attributes",
  "instruction_options": [str] | {name: str}}]}`` (used when present, as WebShop does by default).

Mapping onto :class:`envs.shop.catalogue.Product`: id = asin (lower case), title = name, category = the
file's category, product type = the product's search ``query``, attributes = the ``attributes`` list,
options from ``customization_options`` (values lower-cased, "/" -> " | ", as WebShop), price = the low
end of ``pricing`` ($100 when missing), bullets -> features. Goals follow WebShop: synthetic goals for
every option combination (``instruction with name: value, and …``), human goals as written; the price
bound is WebShop's (two of the first four multiples of $10 above the price, the larger), drawn with a
fixed RNG seeded by ``seed``. Splits as WebShop: goals[:500] eval_unseen ("test"), goals[500:1500]
eval_seen ("eval"), goals[1500:] train; with fewer than 1,500 goals the same 1 : 2 : rest proportions.
The reward's r_type uses our type rule (query/type equality, then title words), not WebShop's spaCy
noun parse, so scores can differ slightly from the published environment.
"""
from __future__ import annotations

import functools
import itertools
import json
import os
import random
import re
from dataclasses import replace
from pathlib import Path

from envs.shop import SPEC as SHOP_SPEC
from envs.shop import config_for
from envs.shop.catalogue import Catalogue, Product
from envs.shop.env import ShopEnv
from envs.shop.goals import SPLITS, Goal, price_bound
from envs.shop.search import SearchIndex

ENV_VAR = "WEBSHOP_DATA"
# WebShop's product categories (the files' "category" field, which becomes info["task_type"]).
TASK_TYPES = ("beauty", "electronics", "fashion", "food", "furniture")
SPEC = replace(SHOP_SPEC, name="webshop", task_types=TASK_TYPES)
PRODUCT_FILES = ("items_shuffle_1000.json", "items_shuffle.json")
ATTRIBUTE_FILES = ("items_ins_v2_1000.json", "items_ins_v2.json")
HUMAN_GOAL_FILE = "items_human_ins.json"


def _find(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


def _price(pricing) -> float:
    if not pricing:
        return 100.0
    values = [float(v) for v in re.findall(r"\d+(?:\.\d+)?", str(pricing).replace(",", ""))]
    return values[0] if values else 100.0


def _product(raw: dict, attributes: dict) -> Product | None:
    asin = str(raw.get("asin", ""))
    if not asin or asin == "nan" or len(asin) > 10:
        return None
    options: dict[str, tuple[str, ...]] = {}
    for name, contents in (raw.get("customization_options") or {}).items():
        if not contents:
            continue
        values = [str(c["value"]).strip().replace("/", " | ").lower() for c in contents
                  if isinstance(c, dict) and c.get("value")]
        if values:
            options[str(name).lower()] = tuple(dict.fromkeys(values))
    bullets = raw.get("small_description") or []
    if isinstance(bullets, str):
        bullets = bullets.split("\n")
    features = tuple(b.strip() for b in bullets if str(b).strip())
    attrs = tuple((attributes.get(asin) or {}).get("attributes") or ())
    title = str(raw.get("name") or raw.get("Title") or "")
    query = str(raw.get("query") or "").lower().strip()
    category = str(raw.get("category") or "").lower()
    return Product(pid=asin.lower(), title=title, category=category, ptype=query, attributes=attrs,
                   options=options, price=_price(raw.get("pricing")),
                   description=str(raw.get("full_description") or ""), features=features,
                   search_text=f"{title} {' '.join(attrs)} {' '.join(features)}")


def _goal_text(instruction: str, bound: float | None) -> str:
    text = instruction.strip().rstrip(".")
    return text + (f", and price lower than {bound:.2f} dollars" if bound is not None else "")


def load(data_dir: str | os.PathLike | None = None, *, seed: int = 0,
         human_goals: bool | None = None) -> tuple[Catalogue, list[Goal]]:
    """Read the WebShop files; returns the catalogue and all goals (in WebShop's order)."""
    folder = data_dir if data_dir is not None else os.environ.get(ENV_VAR)
    if not folder:
        raise FileNotFoundError(f"data_dir: no WebShop data; pass data_dir= or set ${ENV_VAR} to the folder "
                                f"holding {PRODUCT_FILES[0]} and {ATTRIBUTE_FILES[0]}")
    folder = Path(folder)
    products_file = _find(folder, PRODUCT_FILES)
    attributes_file = _find(folder, ATTRIBUTE_FILES)
    if products_file is None or attributes_file is None:
        raise FileNotFoundError(f"data_dir: {folder} (from data_dir or ${ENV_VAR}) lacks one of "
                                f"{PRODUCT_FILES} or {ATTRIBUTE_FILES}")
    raw_products = json.loads(products_file.read_text())
    attributes = json.loads(attributes_file.read_text())
    human_file = folder / HUMAN_GOAL_FILE
    if human_goals is None:
        human_goals = human_file.is_file()
    human = json.loads(human_file.read_text()) if human_goals else {}
    products, seen = [], set()
    for raw in raw_products:
        p = _product(raw, attributes)
        if p is not None and p.pid not in seen:
            seen.add(p.pid)
            products.append(p)
    catalogue = Catalogue(tuple(products), {}, name=str(folder))
    rng = random.Random(f"webshop-goals/{seed}")
    goals: list[Goal] = []
    used: set[str] = set()
    for raw in raw_products:
        asin = str(raw.get("asin", ""))
        idx = catalogue.index_of(asin.lower())
        if idx is None or asin in used:
            continue
        used.add(asin)
        p = catalogue.products[idx]
        if human_goals:
            for g in human.get(asin) or ():
                attrs = tuple(g.get("instruction_attributes") or ())
                if not attrs:
                    continue
                bound = price_bound(p.price, rng)
                opts = g.get("instruction_options") or {}
                opts = dict(opts) if isinstance(opts, dict) else {f"option {i}": v for i, v in enumerate(opts)}
                goals.append(Goal(_goal_text(g["instruction"], bound), p.category, p.ptype, attrs,
                                  {k: str(v).lower() for k, v in opts.items()},
                                  bound if bound is not None else 1e6, p.pid))
        else:
            info = attributes.get(asin) or {}
            attrs = tuple(info.get("instruction_attributes") or ())
            if not info.get("instruction") or not attrs:
                continue
            bound = price_bound(p.price, rng)
            names = sorted(p.options)
            for combo in itertools.product(*(p.options[n] for n in names)):
                opts = dict(zip(names, combo))
                with_text = (" with " + ", and ".join(f"{k}: {v}" for k, v in opts.items())) if opts else ""
                text = info["instruction"].strip().rstrip(".") + with_text
                goals.append(Goal(_goal_text(text, bound), p.category, p.ptype, attrs, opts,
                                  bound if bound is not None else 1e6, p.pid))
    if not goals:
        raise ValueError(f"data_dir: no usable goals in {folder}")
    return catalogue, goals


def split_goals(goals: list[Goal], split: str) -> list[Goal]:
    """WebShop's split of the goal list (see the module doc)."""
    n = len(goals)
    test, eval_end = (500, 1500) if n >= 1500 else (max(1, n // 10), max(2, n // 10 + n // 5))
    pools = {"eval_unseen": goals[:test], "eval_seen": goals[test:eval_end], "train": goals[eval_end:]}
    return pools[split] or goals


class ListGoals:
    """Goal k of a fixed list (k modulo its length)."""

    def __init__(self, goals: list[Goal]):
        self.goals = goals

    def goal(self, k: int) -> Goal:
        return self.goals[k % len(self.goals)]


def make(split: str = "train", seed: int = 0, data_dir: str | os.PathLike | None = None,
         preset: str = "default", human_goals: bool | None = None, **size_options) -> ShopEnv:
    """A shop env on the real WebShop files (``data_dir`` or ``$WEBSHOP_DATA``); ``seed`` fixes the goals'
    price bounds; ``reset(k)`` plays goal ``k`` of the split. ``preset``/``size_options`` as
    :func:`envs.shop.make` (``n_products`` and ``short_catalogue`` are ignored: the files decide)."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    config = config_for(preset, **size_options)
    folder = data_dir if data_dir is not None else os.environ.get(ENV_VAR)
    stamp = ()
    if folder and Path(folder).is_dir():  # re-read when a file changes
        stamp = tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in sorted(Path(folder).glob("*.json")))
    catalogue, goals, index = _cached_world(str(folder) if folder else None, seed, human_goals, stamp)
    return ShopEnv(catalogue, index, ListGoals(split_goals(goals, split)), config, SPEC)


@functools.lru_cache(maxsize=4)
def _cached_world(folder: str | None, seed: int, human_goals: bool | None, stamp: tuple):
    """Parsed files + BM25 index, once per (folder, seed, goal kind, file stamps)."""
    catalogue, goals = load(folder, seed=seed, human_goals=human_goals)
    return catalogue, goals, SearchIndex(catalogue)
