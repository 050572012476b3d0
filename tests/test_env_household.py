"""Household environment: the real ALFWorld engine (TextWorld PDDL) on generated games.

Default run ≈ 40 s of CPU (1–3 min wall on 2 busy cores); the 200-tasks-per-type sweeps are @slow
and print the expert and random-agent success rates per task type (``pytest -m slow -s tests/test_env_household.py``).
"""
from __future__ import annotations

import json
import random
import re
import sys
from collections import Counter, defaultdict

import pytest

import envs
from envs.household import PRESETS, SPEC, SPLITS, TASK_TYPES, make, scenes
from envs.household import real

NOTHING = "Nothing happens."


def play(env, seed, policy):
    """Play one episode; returns (won, steps, rewards, final info)."""
    obs, info = env.reset(seed)
    rewards, done = [], False
    while not done:
        obs, reward, done, info = env.step(policy(env, info))
        rewards.append(reward)
    return info["won"], info["step"], rewards, info


def expert(env, info):
    return env.expert_action()


def random_policy(rng):
    return lambda env, info: rng.choice(info["admissible_actions"])


def success_by_type(preset, n_per_type, policy, split="train", seed=0, **kw):
    rates = {}
    for task_type in TASK_TYPES:
        env = make(split, seed, preset, task_types=(task_type,), **kw)
        wins = [play(env, k, policy)[0] for k in range(n_per_type)]
        rates[task_type] = sum(wins) / n_per_type
    return rates


# --------------------------------------------------------------------------------------------- spec

def test_spec_and_registry():
    assert (SPEC.max_steps, SPEC.history_turns, SPEC.format_penalty, SPEC.success_reward) == (50, 2, 0.1, 10.0)
    assert SPEC.task_types == TASK_TYPES and len(TASK_TYPES) == 6
    assert envs.spec("household") is SPEC and envs.spec("alfworld").name == "alfworld"
    env = envs.make("household", split="eval_unseen", seed=1, preset="small")
    obs, info = env.reset(seed=0)
    assert set(info) >= {"task", "task_type", "admissible_actions", "won", "score", "step"}
    assert info["step"] == 0 and info["won"] is False and info["score"] == 0.0
    assert info["task_type"] in TASK_TYPES and f"Your task is to: {info['task']}" in obs


@pytest.mark.parametrize("kwargs", [
    {"split": "test"}, {"seed": -1}, {"seed": 1.5}, {"preset": "huge"}, {"receptacles": (0, 3)},
    {"receptacles": (5, 2)}, {"objects": (-1, 2)}, {"target_copies": "2"}, {"task_types": ("pick",)},
    {"task_types": ()}, {"colour": 3}, {"max_steps": 0},
])
def test_make_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        make(**kwargs)


def test_reset_rejects_bad_seed_and_step_needs_reset():
    env = make("train", 0, "small")
    with pytest.raises(RuntimeError):
        env.step("look")
    for bad in (-1, 2.0, "3", None):
        with pytest.raises(ValueError):
            env.reset(bad)


# ------------------------------------------------------------------------------------------- expert

def test_expert_solves_small_preset_every_type():
    rates = success_by_type("small", 5, expert)
    assert all(rate >= 0.95 for rate in rates.values()), rates


def test_expert_solves_default_preset_and_unseen_rooms():
    rates = success_by_type("default", 1, expert)
    assert all(rate == 1.0 for rate in rates.values()), rates
    env = make("eval_unseen", 3, "small")
    assert all(play(env, k, expert)[0] for k in range(4))


def test_random_agent_rarely_wins():
    env = make("train", 0, "small")
    rng = random.Random(0)
    wins = [play(env, k, random_policy(rng))[0] for k in range(12)]
    assert sum(wins) / len(wins) <= 0.25, wins


# ------------------------------------------------------------------------------ rewards and episodes

def test_reward_and_done_conventions():
    env = make("train", 0, "small")
    won, steps, rewards, info = play(env, 4, expert)
    assert won and info["score"] == 1.0 and info["step"] == steps == len(rewards)
    assert rewards[-1] == SPEC.success_reward and all(r == 0.0 for r in rewards[:-1])
    obs, reward, done, info2 = env.step("look")  # after the end nothing changes
    assert done and reward == 0.0 and info2["step"] == steps and info2["won"]
    assert env.expert_action() == "look"


def test_expert_replans_after_a_detour():
    env = make("train", 0, "small")
    env.reset(6)
    plan = env.expert_plan()
    assert env.expert_action() == plan[0]
    env.step(plan[0])
    assert env.expert_plan() == plan[1:]  # following the plan keeps it
    env.step("inventory")  # a detour: the next call re-plans from the new state
    won, _, _, _ = play_on(env, expert)
    assert won


def play_on(env, policy):
    info, done, rewards = {"admissible_actions": []}, False, []
    while not done:
        obs, reward, done, info = env.step(policy(env, info))
        rewards.append(reward)
    return info["won"], info["step"], rewards, info


def test_max_steps_cap_and_override():
    env = make("train", 0, "small", max_steps=5)
    env.reset(1)
    for i in range(5):
        obs, reward, done, info = env.step("inventory")
        assert done == (i == 4) and reward == 0.0 and not info["won"]
    env = make("train", 0, "small")
    env.reset(1)
    dones = [env.step("look")[2] for _ in range(SPEC.max_steps)]
    assert dones == [False] * (SPEC.max_steps - 1) + [True]


def test_invalid_commands_answer_nothing_happens():
    env = make("train", 0, "small")
    obs0, info0 = env.reset(2)
    obs, reward, done, info = env.step("fly to the moon")
    assert obs == NOTHING and reward == 0.0 and not done and info["step"] == 1
    assert info["admissible_actions"] == info0["admissible_actions"]
    # a real command works afterwards and its feedback comes from the grammar
    target = next(a for a in info["admissible_actions"] if a.startswith("go to "))
    obs, _, _, _ = env.step(target)
    assert obs.startswith(f"You arrive at {target[len('go to '):]}.")


@pytest.mark.parametrize("action", [
    "x" * 10_000, "去冰箱 1", "<action>go to fridge 1</action>", "", "   ", "\x00\n\t",
    "'; DROP TABLE games; --", "{r.name}", "#intro#", "[{o.name | holds(a:agent, o:object)}]", None,
])
def test_hostile_actions_never_crash(action):
    env = make("train", 0, "small")
    env.reset(3)
    obs, reward, done, info = env.step(action)
    assert obs == NOTHING and reward == 0.0 and not done and info["step"] == 1


def test_help_is_hidden_from_admissible_but_works():
    env = make("train", 0, "small")
    obs, info = env.reset(0)
    assert "help" not in info["admissible_actions"] and "look" in info["admissible_actions"]
    obs, reward, done, info = env.step("help")
    assert "Available commands:" in obs and info["step"] == 1


def test_non_string_action_is_a_type_error():
    env = make("train", 0, "small")
    env.reset(0)
    with pytest.raises(TypeError):
        env.step(42)


def test_engine_restores_sys_argv():
    argv, items = sys.argv, list(sys.argv)
    make("train", 0, "small").reset(11)
    assert sys.argv is argv and sys.argv == items


# ------------------------------------------------------------------------------------- determinism

def trajectory(env, seed, n=4):
    obs, info = env.reset(seed)
    out = [obs, tuple(info["admissible_actions"]), info["task"]]
    for _ in range(n):
        action = env.expert_action()
        obs, _, done, info = env.step(action)
        out += [action, obs, tuple(info["admissible_actions"])]
        if done:
            break
    return out


def test_same_seed_same_game_and_observations():
    a, b = make("train", 0, "small"), make("train", 0, "small")
    for seed in (0, 5):
        assert trajectory(a, seed) == trajectory(b, seed) == trajectory(a, seed)


def test_different_seeds_differ():
    env = make("train", 0, "small")
    games = {tuple(trajectory(env, k, n=0)) for k in range(8)}
    assert len(games) == 8
    other_world = make("train", 1, "small")
    assert any(trajectory(env, k, 0) != trajectory(other_world, k, 0) for k in range(4))


def test_splits_are_disjoint():
    cats = {s: scenes.split_catalogue(0, s, TASK_TYPES) for s in SPLITS}
    pairs = {s: {p for t in TASK_TYPES for p in cats[s][t]} for s in SPLITS}
    assert all(pairs[s] for s in SPLITS)
    assert not pairs["train"] & pairs["eval_seen"]
    rooms = {s: {f for f, _ in pairs[s]} for s in SPLITS}
    assert rooms["eval_unseen"] == set(scenes.UNSEEN_FLOORPLANS)
    assert not rooms["eval_unseen"] & (rooms["train"] | rooms["eval_seen"])
    assert rooms["eval_seen"] <= rooms["train"]  # held-out goals on training rooms
    share = len(pairs["eval_seen"]) / (len(pairs["eval_seen"]) + len(pairs["train"]))
    assert 0.15 < share < 0.25
    for split in SPLITS:  # the drawn tasks come from their split's catalogue
        for k in range(30):
            p = scenes.generate(0, split, k, task_types=TASK_TYPES, **PRESETS["small"])
            assert (p.floorplan, p.goal) in pairs[split]


# ------------------------------------------------------------------------------------- generation

def generated(preset, n=60, task_types=TASK_TYPES, split="train"):
    return [scenes.generate(0, split, k, task_types=task_types, **PRESETS[preset]) for k in range(n)]


def facts(problem, predicate):
    init = problem.pddl.split("(:goal")[0]
    return re.findall(rf"\({predicate} ([^ )]+)(?: ([^ )]+))?\)", init)


def test_size_knobs_bound_rooms():
    for preset, (lo, hi) in (("small", (5, 8)), ("default", (15, 30))):
        for p in generated(preset, 30):
            room_size = len(scenes.load_rooms()[p.floorplan].receptacles)
            assert min(lo, room_size) <= len(p.receptacles) <= hi
    env = make("train", 0, "small", receptacles=3, objects=0)
    obs, info = env.reset(0)
    assert sum(a.startswith("go to ") for a in info["admissible_actions"]) == 3


def test_problem_facts_match_alfred_properties():
    for p in generated("default", 40):
        rtype = dict(facts(p, "receptacleType"))
        openable = {r for r, _ in facts(p, "openable")}
        assert openable == {r for r, t in rtype.items() if t[:-4] in {"Fridge", "Cabinet", "Drawer", "Microwave",
                                                                          "Safe", "Box"}}
        inside = dict(facts(p, "inReceptacle"))
        otype = dict(facts(p, "objectType"))
        for prop in ("cleanable", "heatable", "coolable"):
            holders = {o for o, _ in facts(p, prop)}
            allowed = scenes.C.VAL_ACTION_OBJECTS[prop.capitalize()]
            assert holders == {o for o, t in otype.items() if t[:-4] in allowed}
        targets = [o for o, t in otype.items() if t[:-4] == p.goal.obj]
        assert len(targets) >= (2 if p.goal.task_type == "pick_two_obj_and_place" else 1)
        if p.goal.parent:  # never already in the goal receptacle type
            assert all(rtype[inside[o]][:-4] != p.goal.parent for o in targets)
        needs = {"pick_clean_then_place": "SinkBasinType", "pick_heat_then_place": "MicrowaveType",
                 "pick_cool_then_place": "FridgeType"}.get(p.goal.task_type)
        if needs:
            assert needs in rtype.values()
        if p.goal.task_type == "look_at_obj_in_light":
            assert any(t == "DeskLampType" for t in otype.values())
            assert {o for o, _ in facts(p, "toggleable")} == {o for o, t in otype.items() if t == "DeskLampType"}


def test_placement_priors_are_informative():
    where = defaultdict(Counter)
    for p in generated("default", 300, task_types=("pick_and_place", "pick_heat_then_place",
                                                   "pick_cool_then_place")):
        rtype = dict(facts(p, "receptacleType"))
        for o, r in facts(p, "inReceptacle"):
            where[o.split("_bar_")[0].lower()][rtype[r][:-4]] += 1
    apples = where["apple"]
    assert sum(apples.values()) >= 20
    assert (apples["Fridge"] + apples["CounterTop"] + apples["DiningTable"]) / sum(apples.values()) > 0.6
    mugs = where["mug"]
    assert sum(mugs.values()) >= 10
    assert (mugs["Cabinet"] + mugs["CoffeeMachine"] + mugs["CounterTop"]) / sum(mugs.values()) > 0.5


def test_task_sentences_follow_alfworld_templates():
    patterns = {
        "pick_and_place": r"put (a|some) \w+ (in|on) \w+\.",
        "look_at_obj_in_light": r"(look at \w+ under the|examine the \w+ with the) desklamp\.",
        "pick_clean_then_place": r"(put a clean \w+ in|clean some \w+ and put it in) \w+\.",
        "pick_heat_then_place": r"(put a hot \w+ in|heat some \w+ and put it in) \w+\.",
        "pick_cool_then_place": r"(put a cool \w+ in|cool some \w+ and put it in) \w+\.",
        "pick_two_obj_and_place": r"(put two \w+ in|find two \w+ and put them in) \w+\.",
    }
    seen = Counter()
    for p in generated("small", 120):
        assert re.fullmatch(patterns[p.goal.task_type], p.task), p.task
        seen[p.goal.task_type] += 1
    assert set(seen) == set(TASK_TYPES)
    env = make("train", 0, "small", task_types="pick_heat_then_place")
    assert {env.reset(k)[1]["task_type"] for k in range(5)} == {"pick_heat_then_place"}


@pytest.mark.parametrize("split", SPLITS)
def test_keyword_retrieval_picks_the_task_type_on_the_small_preset(split):
    """Reading only the task sentence, the keyword strategy gives the task_type text on every small-preset task checked
    (the sentence an episode shows is the generator's, env.py's _draw), so household_seeds_b does not train it apart."""
    for p in generated("small", 2000, split=split):
        by_keyword = envs.retrieve_skills("household", task=p.task, task_type=None, strategy="keyword")
        assert by_keyword == envs.retrieve_skills("household", task="", task_type=p.goal.task_type), p.task


# ----------------------------------------------------------------------------------- real adapter

def test_real_adapter_plays_alfworld_game_files(tmp_path, monkeypatch):
    layout = {"train": "train", "eval_seen": "valid_seen"}
    for split, folder in layout.items():
        for k in range(3):
            p = scenes.generate(0, split, k, task_types=TASK_TYPES, **PRESETS["small"])
            kind = scenes.ALFWORLD_TASK_TYPES[p.goal.task_type]
            real.write_game(tmp_path / "json_2.1.1" / folder / f"{kind}-{k}" / "trial_T0", p)
    # skipped like ALFWorld does: movable folders and unsolvable games
    p = scenes.generate(0, "train", 9, task_types=TASK_TYPES, **PRESETS["small"])
    real.write_game(tmp_path / "json_2.1.1/train/pick_and_place_with_movable_recep-x/trial_T0", p)
    bad = real.write_game(tmp_path / "json_2.1.1/train/unsolvable-x/trial_T0", p)
    bad.write_text(json.dumps({**json.loads(bad.read_text()), "solvable": False}))

    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path))
    env = envs.make("alfworld", split="train", seed=0)
    assert len(env.games) == 3 and env.spec.name == "alfworld"
    for k in range(3):
        won, _, rewards, info = play(env, k, expert)
        assert won and rewards[-1] == 10.0 and info["task_type"] in TASK_TYPES
        assert info["gamefile"].endswith("game.tw-pddl") and info["task"].endswith(".")
    seen = real.make("eval_seen", 0, data_dir=tmp_path)
    obs, info = seen.reset(1)
    assert f"Your task is to: {info['task']}" in obs
    assert seen.step("dance")[0] == NOTHING
    # the file's game plays exactly like the generated one
    gen = make("eval_seen", 0, "small")
    path = seen.games[1][0]
    k = int(path.parent.parent.name.rsplit("-", 1)[1])
    assert trajectory(gen, k)[0] == obs


def test_real_adapter_names_alfworld_data_when_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("ALFWORLD_DATA", raising=False)
    with pytest.raises(FileNotFoundError, match="ALFWORLD_DATA"):
        envs.make("alfworld", split="train")
    with pytest.raises(FileNotFoundError, match="ALFWORLD_DATA"):
        real.make("train", data_dir=tmp_path)  # no json_2.1.1 inside
    (tmp_path / "json_2.1.1" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="ALFWORLD_DATA"):
        real.make("train", data_dir=tmp_path)  # no games
    with pytest.raises(ValueError):
        real.make("valid", data_dir=tmp_path)


# ------------------------------------------------------------------------------------- slow sweeps

@pytest.mark.slow
@pytest.mark.parametrize("preset", ["small", "default"])
def test_expert_and_random_success_200_per_type(preset):
    expert_rates = success_by_type(preset, 200, expert)
    rng = random.Random(0)
    random_rates = success_by_type(preset, 200, random_policy(rng))
    print(f"\n[{preset}] expert:", {k: round(v, 3) for k, v in expert_rates.items()})
    print(f"[{preset}] random:", {k: round(v, 3) for k, v in random_rates.items()})
    assert all(v >= 0.95 for v in expert_rates.values()), expert_rates
    assert sum(random_rates.values()) / len(random_rates) <= 0.25, random_rates
