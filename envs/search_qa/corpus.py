"""The generated knowledge world: synthetic entities with attributes and relations, and their passages.

Entities have made-up names (syllable words, unique per world), so a model cannot answer from
pre-training and must search. Kinds and facts:

- country: capital (a city), population (millions), independence year
- city: country, founding year, population
- person: first + last name, birth year, birth city (and so country), occupation
- company: founder (a person), founding year, headquarters city, industry
- river: country, length (km), a city on its banks
- film: director (a person), release year, genre

Each entity has one passage (``title`` + ``text``) stating its facts; the ``long`` style adds a
filler sentence like an encyclopedia stub. Everything is drawn from ``random.Random(seed)``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr",
           "kr", "st", "tr", "th", "sh", "qu", "y")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ei", "ou", "ia")
_CODAS = ("", "", "", "n", "r", "l", "s", "x", "th", "m")
_FIRST_NAMES = ("Talo", "Mira", "Oskan", "Velia", "Doran", "Sefa", "Ilko", "Runa", "Bexa", "Corvin", "Alet",
                "Nima", "Pavo", "Lisko", "Orla", "Tamsin", "Edrik", "Yuna", "Kasmir", "Fenna", "Joro",
                "Halde", "Ines", "Marek", "Solvi", "Rafe", "Zelda", "Amos", "Brisa", "Cato")
_OCCUPATIONS = ("physicist", "painter", "architect", "novelist", "engineer", "composer", "botanist",
                "chemist", "sculptor", "economist", "astronomer", "poet", "surgeon", "historian")
_COMPANY_SUFFIXES = ("Industries", "Systems", "Foods", "Motors", "Labs", "Textiles", "Energy", "Shipping")
_INDUSTRIES = {"Industries": "manufacturing", "Systems": "software", "Foods": "food", "Motors": "automotive",
               "Labs": "biotechnology", "Textiles": "textile", "Energy": "energy", "Shipping": "shipping"}
_FILM_NOUNS = ("Garden", "Voyage", "Winter", "Letter", "Mirror", "Harbor", "Crown", "Lantern", "Orchard",
               "Storm", "Bridge", "Island")
_GENRES = ("drama", "comedy", "thriller", "documentary", "western", "musical", "science fiction")

KINDS = ("country", "city", "person", "company", "river", "film")
PRESETS = {
    # ≥ 2,000 passages, encyclopedia-stub length.
    "default": dict(n_countries=40, n_cities=300, n_people=800, n_companies=400, n_rivers=200, n_films=400,
                    style="long"),
    # ≈ 250 short passages (small model, short prompts).
    "small": dict(n_countries=10, n_cities=40, n_people=90, n_companies=40, n_rivers=25, n_films=45,
                  style="short"),
}


@dataclass
class Entity:
    id: int
    kind: str
    name: str
    attrs: dict = field(default_factory=dict)  # literal facts (years, numbers, words) and relation ids


@dataclass
class World:
    entities: list[Entity]
    by_kind: dict[str, list[int]]
    passages: list[dict]  # {"id", "title", "text", "entity"}; passage i describes entities[i]

    def name(self, entity_id: int) -> str:
        return self.entities[entity_id].name


class _Names:
    """Unique made-up words."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def word(self, syllables: tuple[int, int] = (2, 3)) -> str:
        while True:
            n = self.rng.randint(*syllables)
            parts = [self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(n)]
            word = ("".join(parts) + self.rng.choice(_CODAS)).capitalize()
            if word.lower() not in self.used and len(word) >= 4:
                self.used.add(word.lower())
                return word


def _a(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def _passage(world_entities: list[Entity], e: Entity, style: str) -> str:
    n = lambda i: world_entities[i].name  # noqa: E731
    a = e.attrs
    if e.kind == "country":
        text = (f"{e.name} is a country whose capital is {n(a['capital'])}. It became independent in "
                f"{a['independence']} and has about {a['population']} million inhabitants.")
        extra = f" Its largest export is {a['export']}."
    elif e.kind == "city":
        text = (f"{e.name} is a city in {n(a['country'])}, founded in {a['founded']}, with about "
                f"{a['population']:,} inhabitants.")
        extra = " It is known for its markets and its old stone bridges."
    elif e.kind == "person":
        text = (f"{e.name} (born {a['born']}) is {_a(a['occupation'])} born in {n(a['birth_city'])}, "
                f"{n(a['birth_country'])}.")
        extra = f" {e.name.split()[0]} studied in {n(a['study_city'])}."
    elif e.kind == "company":
        text = (f"{e.name} is {_a(a['industry'])} company founded in {a['founded']} by {n(a['founder'])}. "
                f"Its headquarters are in {n(a['hq'])}.")
        extra = f" It employs about {a['employees']:,} people."
    elif e.kind == "river":
        text = (f"The {e.name} is a river in {n(a['country'])}, {a['length']} kilometres long, flowing "
                f"through {n(a['city'])}.")
        extra = " Its valley is farmed for grain and fruit."
    else:  # film
        text = f"{e.name} is {_a(a['genre'])} film released in {a['year']}, directed by {n(a['director'])}."
        extra = f" It was shot mostly in {n(a['location'])}."
    return text + (extra if style == "long" else "")


def generate_world(seed: int, *, n_countries: int, n_cities: int, n_people: int, n_companies: int,
                   n_rivers: int, n_films: int, style: str = "long") -> World:
    """Draw a world from ``seed``; sizes are the number of entities of each kind (each ≥ 2)."""
    sizes = dict(n_countries=n_countries, n_cities=n_cities, n_people=n_people, n_companies=n_companies,
                 n_rivers=n_rivers, n_films=n_films)
    for key, value in sizes.items():
        if not isinstance(value, int) or value < 2:
            raise ValueError(f"{key}: expected an int >= 2, got {value!r}")
    if style not in ("long", "short"):
        raise ValueError(f"style: expected 'long' or 'short', got {style!r}")
    rng = random.Random(f"search_qa-world-{seed}")
    names = _Names(rng)
    entities: list[Entity] = []
    by_kind: dict[str, list[int]] = {k: [] for k in KINDS}

    def add(kind: str, name: str, **attrs) -> Entity:
        e = Entity(len(entities), kind, name, attrs)
        entities.append(e)
        by_kind[kind].append(e.id)
        return e

    countries = [add("country", names.word(), independence=rng.randint(1700, 1990),
                     population=rng.randint(1, 120), export=rng.choice(("copper", "wool", "tea", "timber",
                                                                         "salt", "wine", "cotton")))
                 for _ in range(n_countries)]
    cities = []
    for i in range(n_cities):
        country = countries[i % n_countries] if i < n_countries else rng.choice(countries)
        cities.append(add("city", names.word(), country=country.id, founded=rng.randint(800, 1850),
                          population=rng.randint(20, 3000) * 1000))
    for i, country in enumerate(countries):  # the first city of each country is its capital
        country.attrs["capital"] = cities[i].id
    people = []
    for _ in range(n_people):
        city = rng.choice(cities)
        people.append(add("person", f"{rng.choice(_FIRST_NAMES)} {names.word()}", born=rng.randint(1820, 1975),
                          occupation=rng.choice(_OCCUPATIONS), birth_city=city.id,
                          birth_country=city.attrs["country"], study_city=rng.choice(cities).id))
    for _ in range(n_companies):
        suffix = rng.choice(_COMPANY_SUFFIXES)
        founder = rng.choice(people)
        add("company", f"{names.word()} {suffix}", industry=_INDUSTRIES[suffix], founder=founder.id,
            founded=min(founder.attrs["born"] + rng.randint(22, 60), 2024), hq=rng.choice(cities).id,
            employees=rng.randint(1, 900) * 100)
    for _ in range(n_rivers):
        city = rng.choice(cities)
        add("river", f"{names.word()} River", country=city.attrs["country"], city=city.id,
            length=rng.randint(40, 4000))
    for _ in range(n_films):
        director = rng.choice(people)
        add("film", f"The {names.word()} {rng.choice(_FILM_NOUNS)}", genre=rng.choice(_GENRES),
            director=director.id, year=min(director.attrs["born"] + rng.randint(22, 60), 2024),
            location=rng.choice(cities).id)

    passages = [{"id": str(e.id), "title": e.name, "text": _passage(entities, e, style), "entity": e.id}
                for e in entities]
    return World(entities, by_kind, passages)
