"""The generated product catalogue: categories, product types, attributes, options, prices and page text.

Everything is a pure function of ``(seed, n_products, style)``: the same arguments give the same catalogue,
byte for byte. A category is a task type (``shirts``, ``shoes``, …); each category holds a few product
types (``polo shirt``, ``dress shirt`` …); one type per category is held out for ``eval_unseen`` goals
(see :mod:`envs.shop.goals`), so the held-out products sit in the shared catalogue (search can find them)
but no training goal ever asks for them.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

# --- the vocabulary -------------------------------------------------------------------------------------

COLORS = ("black", "white", "blue", "red", "green", "grey", "pink", "navy", "beige", "brown", "purple",
          "yellow")


@dataclass(frozen=True)
class CategoryVocab:
    """What products of one category can look like."""

    name: str
    types: tuple[str, ...]  # product types (the thing a goal asks for)
    attributes: tuple[str, ...]  # attribute phrases (searchable, matched by the reward)
    options: dict[str, tuple[str, ...]]  # option dimension -> its possible values
    price: tuple[float, float]  # price range in dollars
    brands: tuple[str, ...]
    audience: tuple[str, ...] = ("",)  # title suffixes ("for men" …)


CATEGORIES: tuple[CategoryVocab, ...] = (
    CategoryVocab(
        "shirts", ("t-shirt", "polo shirt", "dress shirt", "henley shirt"),
        ("long sleeve", "short sleeve", "cotton", "slim fit", "machine wash", "button down",
         "moisture wicking", "relaxed fit"),
        {"size": ("xs", "s", "m", "l", "xl", "xxl"), "color": COLORS},
        (9.0, 49.0), ("Northpeak", "Urbanline", "Cotwell", "Marlow"), ("for men", "for women", "")),
    CategoryVocab(
        "shoes", ("running shoes", "hiking boots", "loafers", "sandals"),
        ("non slip", "rubber sole", "lightweight", "waterproof", "arch support", "memory foam", "leather",
         "breathable"),
        {"size": ("6", "7", "7.5", "8", "8.5", "9", "10", "11", "12"), "color": COLORS},
        (19.0, 129.0), ("Stridex", "Trailform", "Solemate", "Kinetra"), ("for men", "for women", "")),
    CategoryVocab(
        "headphones", ("wireless earbuds", "over-ear headphones", "gaming headset", "neckband headphones"),
        ("wireless", "noise cancelling", "bluetooth 5.0", "long battery life", "built-in microphone",
         "water resistant", "foldable", "fast charging"),
        {"color": ("black", "white", "blue", "red", "grey", "pink", "green")},
        (15.0, 199.0), ("Sonique", "Audiora", "Beatcraft", "Hushpod")),
    CategoryVocab(
        "coffee", ("ground coffee", "whole bean coffee", "coffee pods", "cold brew concentrate"),
        ("organic", "dark roast", "medium roast", "decaf", "fair trade", "single origin", "gluten free",
         "non gmo"),
        {"flavor": ("original", "vanilla", "hazelnut", "caramel", "mocha", "cinnamon"),
         "size": ("12 ounce", "2 pound", "pack of 2", "pack of 4")},
        (6.0, 39.0), ("Roastery", "Beanhaus", "Morningstar", "Kaffeld")),
    CategoryVocab(
        "skincare", ("face moisturizer", "vitamin c serum", "sunscreen lotion", "cleansing gel"),
        ("fragrance free", "hyaluronic acid", "paraben free", "sensitive skin", "cruelty free", "oil free",
         "spf 50", "dermatologist tested"),
        {"size": ("1 fl oz", "1.7 fl oz", "3.4 fl oz", "6.8 fl oz")},
        (7.0, 59.0), ("Dermalux", "Purelle", "Skinvera", "Glowen")),
    CategoryVocab(
        "phone_cases", ("iphone case", "galaxy case", "wallet case", "clear case"),
        ("shockproof", "slim", "wireless charging compatible", "kickstand", "card holder",
         "drop protection", "tpu", "magnetic"),
        {"color": COLORS, "size": ("5.8 inch", "6.1 inch", "6.7 inch")},
        (5.0, 35.0), ("Armorcase", "Shellix", "Guardify", "Pocketa")),
    CategoryVocab(
        "furniture", ("office chair", "bookshelf", "coffee table", "bar stool"),
        ("easy assembly", "solid wood", "height adjustable", "lumbar support", "metal frame",
         "storage space", "mid century", "living room"),
        {"color": ("black", "white", "walnut", "oak", "grey", "espresso")},
        (39.0, 299.0), ("Homecraft", "Woodhaven", "Loftly", "Nordvik")),
    CategoryVocab(
        "snacks", ("protein bars", "potato chips", "trail mix", "beef jerky"),
        ("gluten free", "high protein", "low sugar", "keto friendly", "vegan", "non gmo",
         "individually wrapped", "low calorie"),
        {"flavor": ("sea salt", "barbecue", "chocolate", "peanut butter", "teriyaki", "honey"),
         "size": ("6 count", "12 count", "24 count")},
        (4.0, 45.0), ("Crunchwell", "Snackery", "Trailhead", "Munchly")),
    CategoryVocab(
        "bedding", ("sheet set", "duvet cover", "bed pillow", "throw blanket"),
        ("microfiber", "machine washable", "cooling", "hypoallergenic", "wrinkle free", "deep pocket",
         "down alternative", "ultra soft"),
        {"size": ("twin", "full", "queen", "king"), "color": COLORS},
        (15.0, 119.0), ("Dreamweave", "Slumbra", "Linenly", "Cozynest")),
    CategoryVocab(
        "kitchen", ("frying pan", "knife set", "cutting board", "mixing bowls"),
        ("nonstick", "dishwasher safe", "stainless steel", "bpa free", "oven safe", "induction compatible",
         "heavy duty", "easy clean"),
        {"size": ("8 inch", "10 inch", "12 inch"), "color": ("black", "silver", "red", "grey", "green")},
        (9.0, 89.0), ("Chefmark", "Panora", "Ironleaf", "Kitchora")),
)
CATEGORY_NAMES = tuple(c.name for c in CATEGORIES)

_REVIEW_LINES = ("Works as described.", "Good value for the price.", "Would buy again.",
                 "Arrived quickly and well packed.", "Quality is better than expected.",
                 "Not bad, but a little smaller than I thought.", "My second one, still happy.")


@dataclass(frozen=True)
class Product:
    """One product. ``options`` maps each option dimension to its available values (all lower case, and
    unique across the product's dimensions, so ``click[value]`` is unambiguous)."""

    pid: str  # lower-case id, the results page's clickable
    title: str
    category: str
    ptype: str  # product type, e.g. "polo shirt"
    attributes: tuple[str, ...]
    options: dict[str, tuple[str, ...]]
    price: float
    description: str = ""
    features: tuple[str, ...] = ()
    reviews: tuple[str, ...] = ()
    search_text: str = ""  # what the BM25 index sees (title + attributes + type)


@dataclass(frozen=True)
class Catalogue:
    """A list of products plus the held-out product types (``category -> type``) of ``eval_unseen``."""

    products: tuple[Product, ...]
    held_out_types: dict[str, str] = field(default_factory=dict)
    name: str = "generated"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", {p.pid: i for i, p in enumerate(self.products)})

    def index_of(self, pid: str) -> int | None:
        return self._by_id.get(pid)  # type: ignore[attr-defined]


def _product_id(rng: random.Random, short: bool, taken: set[str], i: int) -> str:
    if short:
        return f"p{i:03d}"
    while True:
        pid = "b0" + "".join(rng.choice("abcdefghjkmnpqrstuvwxyz0123456789") for _ in range(8))
        if pid not in taken:
            return pid


def generate_catalogue(seed: int, n_products: int, *, short: bool = False) -> Catalogue:
    """Build ``n_products`` products spread evenly over :data:`CATEGORIES` (round robin, then types).

    ``short`` (the small preset): ids ``p000``…, titles are just ``attributes + type``, two option values
    per dimension, one-line description, no features/reviews text.
    """
    if not isinstance(n_products, int) or n_products < len(CATEGORIES) * 4:
        raise ValueError(f"n_products: expected an int >= {len(CATEGORIES) * 4}, got {n_products!r}")
    rng = random.Random(f"shop-catalogue/{seed}")
    held_out = {c.name: rng.choice(c.types) for c in CATEGORIES}
    products: list[Product] = []
    taken: set[str] = set()
    for i in range(n_products):
        cat = CATEGORIES[i % len(CATEGORIES)]
        ptype = cat.types[(i // len(CATEGORIES)) % len(cat.types)]
        n_attr = rng.randint(2, 3) if short else rng.randint(3, 5)
        attributes = tuple(sorted(rng.sample(cat.attributes, n_attr), key=cat.attributes.index))
        options: dict[str, tuple[str, ...]] = {}
        for dim, values in cat.options.items():
            k = 2 if short else rng.randint(2, min(5, len(values)))
            options[dim] = tuple(sorted(rng.sample(values, k), key=values.index))
        price = round(rng.uniform(*cat.price), 2)
        brand = rng.choice(cat.brands)
        if short:
            title = f"{' '.join(attributes)} {ptype}"
        else:
            shown = rng.sample(attributes, 2)
            who = rng.choice(cat.audience)
            title = " ".join(w for w in (brand, *(a.title() for a in shown), ptype.title(), who) if w)
        pid = _product_id(rng, short, taken, i)
        taken.add(pid)
        if short:
            description, features, reviews = f"A {ptype} that is {', '.join(attributes)}.", (), ()
        else:
            description = (f"The {brand} {ptype} is {', '.join(attributes[:-1])} and {attributes[-1]}. "
                           f"Available in {', '.join(v for vals in options.values() for v in vals)}.")
            features = tuple(f"{a.capitalize()}." for a in attributes) + (f"Made by {brand}.",)
            stars = rng.randint(3, 5)
            reviews = tuple(f"{stars} stars: {line}" for line in rng.sample(_REVIEW_LINES, 2))
        search_text = f"{title} {' '.join(attributes)} {ptype} {cat.name}"
        products.append(Product(pid, title, cat.name, ptype, attributes, options, price, description,
                                features, reviews, search_text))
    return Catalogue(tuple(products), held_out)
