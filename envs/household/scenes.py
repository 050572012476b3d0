"""Task generator for the household environment: ALFRED rooms → ALFWorld PDDL problems.

Rooms come from the 120 ALFRED floor plans shipped inside the ``alfworld`` package
(``alfworld/gen/layouts/FloorPlan*-objects.json`` lists a room's object and receptacle types,
``FloorPlan*-openable.json`` its receptacle instances). Object classes, which receptacle may hold
which object (``VAL_RECEPTACLE_OBJECTS`` → ``canContain``), which objects are cleanable / heatable /
coolable, the ALFRED train/test floor-plan split and the goal PDDL + task-sentence templates all come
from the package (``alfworld.gen.constants``, ``alfworld.gen.goal_library``). What is ours: which
receptacles/objects a generated room keeps (size knobs), where objects start (realistic placement
priors below, so skills and experience carry learnable information), the train / eval_seen /
eval_unseen partition, and the PDDL problem writer (the format of ALFWorld's ``initial_state.pddl``).

Everything is a pure function of ``(world seed, split, task index)``: string-seeded ``random.Random``
instances (SHA-512 seeded, independent of ``PYTHONHASHSEED``) and sorted iteration only.
"""
from __future__ import annotations

import functools
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import alfworld
import alfworld.gen.constants as C
import alfworld.gen.goal_library as GOALS

PACKAGE_DIR = Path(alfworld.__file__).resolve().parent
LAYOUT_DIR = PACKAGE_DIR / "gen" / "layouts"
DOMAIN_PATH = PACKAGE_DIR / "data" / "alfred.pddl"
GRAMMAR_PATH = PACKAGE_DIR / "data" / "alfred.twl2"

# Our task-type names → ALFWorld's (traj_data.json "task_type", goal_library keys).
TASK_TYPES = ("pick_and_place", "look_at_obj_in_light", "pick_clean_then_place", "pick_heat_then_place",
              "pick_cool_then_place", "pick_two_obj_and_place")
ALFWORLD_TASK_TYPES = {
    "pick_and_place": "pick_and_place_simple",
    "look_at_obj_in_light": "look_at_obj_in_light",
    "pick_clean_then_place": "pick_clean_then_place_in_recep",
    "pick_heat_then_place": "pick_heat_then_place_in_recep",
    "pick_cool_then_place": "pick_cool_then_place_in_recep",
    "pick_two_obj_and_place": "pick_two_obj_and_place",
}
# The appliance a task type needs (its receptacle type), if any.
_APPLIANCE = {"pick_clean_then_place": "SinkBasin", "pick_heat_then_place": "Microwave",
              "pick_cool_then_place": "Fridge"}
_PROPERTY = {"pick_clean_then_place": "Cleanable", "pick_heat_then_place": "Heatable",
             "pick_cool_then_place": "Coolable"}

SPLITS = ("train", "eval_seen", "eval_unseen")
UNSEEN_FLOORPLANS = frozenset(C.TEST_SCENE_NUMBERS)  # ALFRED's held-out rooms (1-6, 201-206, ...)
EVAL_SEEN_FRACTION = 0.2  # share of (room, goal) combinations held out of train for eval_seen

LAMP = "DeskLamp"
LAMP_HOLDERS = ("Desk", "SideTable", "Dresser", "Shelf", "CoffeeTable", "DiningTable")
# Layout receptacle names that differ from the PDDL receptacle type.
_LAYOUT_RECEPTACLE = {"Sink": "SinkBasin", "Bathtub": "BathtubBasin"}
# Receptacle types present in a room's object list but without instances in openable.json.
_DEFAULT_COUNT = {"StoveBurner": 4}
# Receptacles a text agent cannot use (only hold sliced bread / nothing in the text game).
_SKIP_RECEPTACLES = frozenset({"Toaster", "PaintingHanger"})
_OPENABLE = frozenset(C.OPENABLE_CLASS_LIST)
_MOVABLE = frozenset(C.MOVABLE_RECEPTACLES)
_CAN_CONTAIN = {r: frozenset(o for o in objs if not o.endswith("Sliced"))
                for r, objs in C.VAL_RECEPTACLE_OBJECTS.items() if r not in _MOVABLE}
RECEPTACLE_TYPES = frozenset(_CAN_CONTAIN) - _SKIP_RECEPTACLES
PICKUPABLE = frozenset(o for objs in _CAN_CONTAIN.values() for o in objs)
_ACTIONABLE = {k: frozenset(v) for k, v in C.VAL_ACTION_OBJECTS.items()}

# Placement priors: object type → {receptacle type: weight}. A receptacle type that may hold the
# object (canContain) but is not listed gets weight _FALLBACK_WEIGHT. A start receptacle is drawn by type
# (weights over the types in the room), then uniformly among that type's instances.
_FALLBACK_WEIGHT = 0.3
_KITCHEN_TOOLS = {"Drawer": 6, "CounterTop": 4, "DiningTable": 3, "SinkBasin": 1}
_KITCHEN_WARE = {"Cabinet": 5, "CounterTop": 3, "DiningTable": 3, "Shelf": 2, "Fridge": 1, "SinkBasin": 1,
                 "Microwave": 1}
_PRODUCE = {"Fridge": 6, "CounterTop": 4, "DiningTable": 3, "GarbageCan": 1, "SinkBasin": 1, "Microwave": 1}
_COOKWARE = {"StoveBurner": 6, "Cabinet": 4, "CounterTop": 2, "SinkBasin": 1, "DiningTable": 1}
_SMALL_THINGS = {"SideTable": 4, "Dresser": 4, "Desk": 3, "Drawer": 3, "CoffeeTable": 3, "Shelf": 2,
                 "DiningTable": 2}
_DECOR = {"Shelf": 5, "CoffeeTable": 3, "SideTable": 3, "Dresser": 3, "DiningTable": 2, "Desk": 2}
PRIORS: dict[str, dict[str, float]] = {
    "Apple": _PRODUCE, "Tomato": _PRODUCE, "Potato": _PRODUCE,
    "Lettuce": {"Fridge": 7, "CounterTop": 3, "DiningTable": 3},
    "Egg": {"Fridge": 7, "CounterTop": 3, "DiningTable": 2, "GarbageCan": 1, "SinkBasin": 1},
    "Bread": {"CounterTop": 5, "DiningTable": 5, "Fridge": 3},
    "Mug": {"CoffeeMachine": 5, "Cabinet": 5, "CounterTop": 3, "Desk": 3, "SinkBasin": 2, "Shelf": 2,
            "DiningTable": 2, "Microwave": 1},
    "Cup": {**_KITCHEN_WARE, "Fridge": 2, "SinkBasin": 2},
    "Bowl": {**_KITCHEN_WARE, "Fridge": 2},
    "Plate": {**_KITCHEN_WARE, "Cabinet": 6, "DiningTable": 4},
    "Pan": _COOKWARE, "Pot": _COOKWARE, "Kettle": {**_COOKWARE, "CounterTop": 3, "Cabinet": 3},
    "Fork": _KITCHEN_TOOLS, "Spoon": _KITCHEN_TOOLS, "ButterKnife": _KITCHEN_TOOLS, "Knife": _KITCHEN_TOOLS,
    "Spatula": _KITCHEN_TOOLS, "Ladle": {**_KITCHEN_TOOLS, "Cabinet": 1},
    "SaltShaker": {"CounterTop": 5, "Cabinet": 4, "DiningTable": 3, "Shelf": 2, "Drawer": 1},
    "PepperShaker": {"CounterTop": 5, "Cabinet": 4, "DiningTable": 3, "Shelf": 2, "Drawer": 1},
    "DishSponge": {"SinkBasin": 5, "BathtubBasin": 3, "CounterTop": 3, "Drawer": 2, "Cart": 2, "Cabinet": 1},
    "SoapBottle": {"CounterTop": 5, "Cabinet": 3, "Toilet": 3, "Shelf": 2, "Cart": 2, "SinkBasin": 1},
    "SoapBar": {"BathtubBasin": 4, "SinkBasin": 3, "CounterTop": 3, "Toilet": 3, "Cabinet": 2, "Cart": 1},
    "Cloth": {"LaundryHamper": 4, "BathtubBasin": 3, "Cabinet": 3, "CounterTop": 2, "Cart": 2, "Drawer": 2},
    "HandTowel": {"HandTowelHolder": 8, "CounterTop": 1, "Cabinet": 1},
    "Towel": {"TowelHolder": 10},
    "ToiletPaper": {"ToiletPaperHanger": 6, "Toilet": 3, "Cabinet": 3, "CounterTop": 2, "Shelf": 2},
    "SprayBottle": {"Cabinet": 4, "Toilet": 3, "CounterTop": 2, "Shelf": 2, "Cart": 2},
    "Candle": {"CounterTop": 3, "Shelf": 3, "Toilet": 2, "SideTable": 2, "Dresser": 2, "DiningTable": 2},
    "TissueBox": {"SideTable": 4, "Dresser": 4, "Desk": 3, "CoffeeTable": 3, "TVStand": 3, "Toilet": 2},
    "WineBottle": {"Fridge": 4, "CounterTop": 4, "DiningTable": 3, "Cabinet": 2, "Shelf": 2},
    "Glassbottle": {"Fridge": 4, "CounterTop": 4, "DiningTable": 3, "Cabinet": 2, "Shelf": 2},
    "Book": {"Desk": 5, "Shelf": 5, "Bed": 4, "SideTable": 3, "Dresser": 3, "CoffeeTable": 3, "Sofa": 2},
    "CellPhone": {"Bed": 4, "Desk": 4, "SideTable": 4, "Dresser": 3, "Sofa": 3, "Drawer": 2, "ArmChair": 2},
    "CreditCard": _SMALL_THINGS, "KeyChain": _SMALL_THINGS, "Watch": _SMALL_THINGS,
    "Laptop": {"Desk": 6, "Bed": 5, "Sofa": 3, "CoffeeTable": 3, "DiningTable": 2, "Dresser": 2},
    "Pillow": {"Sofa": 6, "Bed": 5, "ArmChair": 4},
    "RemoteControl": {"CoffeeTable": 5, "Sofa": 4, "ArmChair": 3, "SideTable": 3, "Dresser": 2},
    "AlarmClock": {"SideTable": 6, "Desk": 5, "Dresser": 5, "Shelf": 3},
    "Pen": {"Desk": 6, "Drawer": 4, "SideTable": 3, "Dresser": 3, "Shelf": 2},
    "Pencil": {"Desk": 6, "Drawer": 4, "SideTable": 3, "Dresser": 3, "Shelf": 2},
    "CD": {"Desk": 4, "Drawer": 4, "Shelf": 3, "SideTable": 3, "Safe": 2},
    "Statue": _DECOR, "Vase": _DECOR,
    "Newspaper": {"CoffeeTable": 4, "Sofa": 4, "ArmChair": 3, "DiningTable": 3, "Ottoman": 2},
    "Box": {"CoffeeTable": 3, "DiningTable": 3, "Sofa": 2, "Dresser": 2, "Shelf": 2},
}
_LAMP_PRIOR = {"Desk": 5, "SideTable": 5, "Dresser": 4, "Shelf": 1, "CoffeeTable": 1, "DiningTable": 1}


@dataclass(frozen=True)
class Room:
    """One ALFRED floor plan: its receptacle instances (type per instance) and pickupable object types."""

    floorplan: int
    receptacles: tuple[str, ...]  # one entry per instance, e.g. ("Cabinet", "Cabinet", "Fridge", ...)
    objects: tuple[str, ...]  # pickupable object types found in the room (sorted)
    has_lamp: bool

    @property
    def receptacle_types(self) -> frozenset[str]:
        return frozenset(self.receptacles)


@dataclass(frozen=True)
class Goal:
    task_type: str
    obj: str  # object type, e.g. "Apple"
    parent: str  # target receptacle type ("" for look tasks)
    toggle: str = ""  # lamp type for look tasks


@dataclass
class Problem:
    """A generated game: the PDDL problem text, its task sentence and bookkeeping for tests."""

    floorplan: int
    goal: Goal
    task: str  # "put a clean apple in fridge."
    pddl: str
    receptacles: list[str] = field(default_factory=list)  # PDDL ids
    objects: list[str] = field(default_factory=list)  # PDDL ids


@functools.lru_cache(maxsize=None)
def load_rooms() -> dict[int, Room]:
    """All 120 floor plans shipped with alfworld, keyed by number."""
    rooms = {}
    for path in sorted(LAYOUT_DIR.glob("FloorPlan*-objects.json")):
        number = int(path.name[len("FloorPlan"):].split("-")[0])
        types = set(json.loads(path.read_text()))
        openable = json.loads((LAYOUT_DIR / f"FloorPlan{number}-openable.json").read_text())
        counts: dict[str, int] = {}
        for key in openable:
            name = key.split("|")[0]
            name = _LAYOUT_RECEPTACLE.get(name, name)
            counts[name] = counts.get(name, 0) + 1
        for name in types:
            name = _LAYOUT_RECEPTACLE.get(name, name)
            if name in RECEPTACLE_TYPES and name not in counts:
                counts[name] = _DEFAULT_COUNT.get(name, 1)
        receptacles = tuple(r for r in sorted(counts) if r in RECEPTACLE_TYPES for _ in range(counts[r]))
        objects = tuple(sorted(t for t in types if t in PICKUPABLE))
        rooms[number] = Room(number, receptacles, objects, LAMP in types)
    return rooms


def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def room_goals(room: Room, task_type: str) -> list[Goal]:
    """Every goal of ``task_type`` that ``room`` supports (sorted)."""
    types = room.receptacle_types
    goals = []
    if task_type == "look_at_obj_in_light":
        if room.has_lamp and types & set(LAMP_HOLDERS):
            goals = [Goal(task_type, o, "", LAMP) for o in room.objects]
        return goals
    appliance = _APPLIANCE.get(task_type)
    if appliance and appliance not in types:
        return []
    for obj in room.objects:
        if task_type in _PROPERTY and obj not in _ACTIONABLE[_PROPERTY[task_type]]:
            continue
        for parent in sorted(types):
            if parent == appliance or obj not in _CAN_CONTAIN[parent]:
                continue
            # the object must be able to start somewhere other than the target receptacle type
            if not any(obj in _CAN_CONTAIN[r] for r in types if r != parent):
                continue
            goals.append(Goal(task_type, obj, parent))
    return goals


def goal_split(seed: int, floorplan: int, goal: Goal) -> str:
    """Which split owns (room, goal): held-out rooms → eval_unseen; otherwise a seeded hash sends
    EVAL_SEEN_FRACTION of the combinations to eval_seen and the rest to train."""
    if floorplan in UNSEEN_FLOORPLANS:
        return "eval_unseen"
    key = f"{seed}|{floorplan}|{goal.task_type}|{goal.obj}|{goal.parent}|{goal.toggle}"
    return "eval_seen" if stable_hash(key) % 1000 < EVAL_SEEN_FRACTION * 1000 else "train"


@functools.lru_cache(maxsize=64)
def split_catalogue(seed: int, split: str, task_types: tuple[str, ...]) -> dict[str, list[tuple[int, Goal]]]:
    """task type → the (floorplan, goal) pairs owned by ``split``."""
    catalogue: dict[str, list[tuple[int, Goal]]] = {}
    for task_type in task_types:
        pairs = []
        for number, room in sorted(load_rooms().items()):
            pairs += [(number, g) for g in room_goals(room, task_type) if goal_split(seed, number, g) == split]
        catalogue[task_type] = pairs
    return catalogue


def _pick_receptacle(rng: random.Random, obj: str, present: list[tuple[str, str]], exclude: set[str],
                     prior: dict[str, float] | None = None) -> tuple[str, str] | None:
    """A start receptacle (type, id) for ``obj`` among ``present`` drawn by the placement prior."""
    prior = PRIORS.get(obj, {}) if prior is None else prior
    by_type: dict[str, list[str]] = {}
    for rtype, rid in present:
        if rtype in exclude:
            continue
        if obj == LAMP or obj in _CAN_CONTAIN[rtype]:
            by_type.setdefault(rtype, []).append(rid)
    if not by_type:
        return None
    kinds = sorted(by_type)
    weights = [prior.get(k, _FALLBACK_WEIGHT) for k in kinds]
    kind = rng.choices(kinds, weights)[0]
    return kind, rng.choice(by_type[kind])


def _draw(rng: random.Random, bounds: tuple[int, int]) -> int:
    return rng.randint(bounds[0], bounds[1])


def _pddl_name(text: str) -> str:
    return text.replace("|", "_bar_")


def generate(seed: int, split: str, index: int, *, task_types: tuple[str, ...],
             receptacles: tuple[int, int], objects: tuple[int, int], target_copies: tuple[int, int]) -> Problem:
    """Task ``index`` of ``split`` in world ``seed``: room, goal, object placement and the PDDL problem."""
    catalogue = split_catalogue(seed, split, task_types)
    rng = random.Random(f"household|{seed}|{split}|{index}")
    usable = [t for t in task_types if catalogue[t]]
    if not usable:
        raise ValueError(f"task_types: no room of split {split!r} supports any of {task_types}")
    task_type = rng.choice(usable)
    floorplan, goal = rng.choice(catalogue[task_type])
    room = load_rooms()[floorplan]
    # Per-world room identity: which instance of a type is "cabinet 3" is fixed by (seed, floorplan).
    room_rng = random.Random(f"room|{seed}|{floorplan}")
    instances = [(rtype, f"{rtype}|{i:02d}") for i, rtype in enumerate(room.receptacles)]
    room_rng.shuffle(instances)

    # Keep the receptacles the goal needs, then fill up to the drawn size, new receptacle types before
    # repeated instances: a room cut below its layout's size loses surplus cabinets/drawers/shelves first.
    needed = {goal.parent, _APPLIANCE.get(goal.task_type, "")} - {""}
    lamp_holder = ""
    if goal.task_type == "look_at_obj_in_light":
        holders = sorted({r for r, _ in instances if r in LAMP_HOLDERS})
        lamp_holder = rng.choices(holders, [_LAMP_PRIOR.get(h, 1.0) for h in holders])[0]
        needed.add(lamp_holder)
    # the object needs a start receptacle other than the target type
    starts = sorted({r for r, _ in instances if r != goal.parent and goal.obj in _CAN_CONTAIN[r]})
    obj_prior = PRIORS.get(goal.obj, {})
    if not needed & set(starts):
        needed.add(rng.choices(starts, [obj_prior.get(s, _FALLBACK_WEIGHT) for s in starts])[0])
    n_recep = min(_draw(rng, receptacles), len(instances))
    chosen, seen_types = [], set()
    for rtype, rid in instances:  # one instance of each needed type first
        if rtype in needed and rtype not in seen_types:
            chosen.append((rtype, rid))
            seen_types.add(rtype)
    rest = [x for x in instances if x not in chosen]
    rng.shuffle(rest)
    rest.sort(key=lambda x: x[0] in seen_types)  # new types before repeats (stable: shuffled within)
    for rtype, rid in rest:
        if len(chosen) >= max(n_recep, len(needed)):
            break
        chosen.append((rtype, rid))
        seen_types.add(rtype)
    chosen.sort(key=lambda x: x[1])
    rtypes_present = {r for r, _ in chosen}

    # Objects: the target copies (never starting in the target receptacle type), distractors, the lamp.
    placed: list[tuple[str, str, str]] = []  # (object type, object id, receptacle id)
    counter: dict[str, int] = {}

    def add(otype: str, exclude: set[str], prior: dict[str, float] | None = None) -> bool:
        spot = _pick_receptacle(rng, otype, chosen, exclude, prior)
        if spot is None:
            return False
        counter[otype] = counter.get(otype, 0) + 1
        placed.append((otype, f"{otype}|{counter[otype]:02d}", spot[1]))
        return True

    copies = _draw(rng, target_copies)
    if goal.task_type == "pick_two_obj_and_place":
        copies = max(copies, 2)
    exclude = {goal.parent} if goal.parent else set()
    for _ in range(copies):
        if not add(goal.obj, exclude):
            raise RuntimeError(f"generator: no start receptacle for {goal}")  # excluded by room_goals
    if lamp_holder:
        add(LAMP, rtypes_present - {lamp_holder}, _LAMP_PRIOR)
    elif room.has_lamp and objects[1] >= 5 and rtypes_present & set(LAMP_HOLDERS):
        add(LAMP, rtypes_present - set(LAMP_HOLDERS), _LAMP_PRIOR)
    others = [o for o in room.objects if o != goal.obj]
    for _ in range(_draw(rng, objects)):  # a distractor with no fitting receptacle in the room is dropped
        if others:
            add(rng.choice(others), set())

    sentence = rng.choice(GOALS.gdict[ALFWORLD_TASK_TYPES[goal.task_type]]["templates"]).format(
        obj=goal.obj.lower(), recep=goal.parent.lower(), toggle=goal.toggle.lower(), mrecep="")
    pddl = problem_pddl(f"{seed}_{split}_{index}", goal, chosen, placed)
    return Problem(floorplan, goal, sentence + ".", pddl, [rid for _, rid in chosen],
                   [oid for _, oid, _ in placed])


def problem_pddl(name: str, goal: Goal, receptacles: list[tuple[str, str]],
                 placed: list[tuple[str, str, str]]) -> str:
    """The PDDL problem (ALFWorld's ``initial_state.pddl`` layout) for the alfred domain."""
    rid_name = {rid: _pddl_name(f"Sink|{rid.split('|')[1]}|SinkBasin") if rtype == "SinkBasin" else
                _pddl_name(f"Bathtub|{rid.split('|')[1]}|BathtubBasin") if rtype == "BathtubBasin" else
                _pddl_name(rid) for rtype, rid in receptacles}
    rloc = {rid: f"loc_bar_{i + 1}" for i, (_, rid) in enumerate(receptacles)}
    rtype_of = dict((rid, rtype) for rtype, rid in receptacles)
    otypes = sorted({o for o, _, _ in placed})
    rtypes = sorted({r for r, _ in receptacles})
    decl = ["agent1 - agent"]
    decl += [f"{_pddl_name(oid)} - object" for _, oid, _ in placed]
    decl += [f"{rid_name[rid]} - receptacle" for _, rid in receptacles]
    decl += ["loc_bar_0 - location"] + [f"{loc} - location" for loc in rloc.values()]
    decl += [f"{t}Type - otype" for t in otypes] + [f"{t}Type - rtype" for t in rtypes]
    init = ["(atLocation agent1 loc_bar_0)"]
    for rtype, rid in receptacles:
        init.append(f"(receptacleType {rid_name[rid]} {rtype}Type)")
        init.append(f"(receptacleAtLocation {rid_name[rid]} {rloc[rid]})")
        if rtype in _OPENABLE:
            init.append(f"(openable {rid_name[rid]})")
    for otype, oid, rid in placed:
        name = _pddl_name(oid)
        init.append(f"(objectType {name} {otype}Type)")
        init.append(f"(inReceptacle {name} {rid_name[rid]})")
        init.append(f"(objectAtLocation {name} {rloc[rid]})")
        if otype == LAMP:
            init.append(f"(toggleable {name})")
            continue
        init.append(f"(pickupable {name})")
        for prop, pred in (("Cleanable", "cleanable"), ("Heatable", "heatable"), ("Coolable", "coolable")):
            if otype in _ACTIONABLE[prop]:
                init.append(f"({pred} {name})")
        if otype in _MOVABLE:
            init.append(f"(isReceptacleObject {name})")
        # ALFRED marks target objects that start in a fridge as already cool.
        if otype == goal.obj and rtype_of[rid] == "Fridge":
            init.append(f"(isCool {name})")
    for rtype in rtypes:
        init += [f"(canContain {rtype}Type {o}Type)" for o in otypes if o in _CAN_CONTAIN[rtype]]
    goal_pddl = GOALS.gdict[ALFWORLD_TASK_TYPES[goal.task_type]]["pddl"].format(
        obj=goal.obj, recep=goal.parent, toggle=goal.toggle, mrecep="").replace("#", "-")
    body = "\n        ".join
    return (f"(define (problem plan_{name})\n    (:domain alfred)\n    (:objects\n        {body(decl)}\n    )\n"
            f"    (:init\n        {body(init)}\n    )\n{goal_pddl}")
