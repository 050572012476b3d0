"""The shop environment (WebShop-like): reward formula, expert, random agent, determinism, page flow,
invalid and hostile actions, step cap, presets, the real-data loader and the skill files."""
from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import numpy as np
import pytest

import envs
import envs.shop as shop
from envs.shop import pages
from envs.shop.catalogue import CATEGORIES, generate_catalogue
from envs.shop.goals import SPLITS, split_pools
from envs.shop.reward import (count_attribute_matches, count_option_matches, fuzzy_match, shop_reward,
                              type_reward)

SKILLS = Path(envs.__file__).resolve().parent / "skills" / "shop"


def play(env, k, policy):
    """One episode of task ``k``; returns (final info, last reward, total reward, transcript)."""
    obs, info = env.reset(k)
    transcript, total, reward, done = [obs], 0.0, 0.0, False
    while not done:
        action = policy(env, obs, info)
        obs, reward, done, info = env.step(action)
        total += reward
        transcript += [action, obs]
    return info, reward, total, transcript


def expert(env, obs, info):
    return env.expert_action()


def random_agent(rng):
    """Searches with the goal sentence, then clicks uniformly among the admissible buttons."""
    def policy(env, obs, info):
        if info["page"] == "search":
            return f"search[{info['task']}]"
        return rng.choice(info["admissible_actions"])
    return policy


def _reward(**over):
    """shop_reward on a t-shirt goal (2 attributes, 2 options, bound $40) and a matching product."""
    args = dict(goal_type="t-shirt", goal_category="shirts", goal_attributes=["cotton", "long sleeve"],
                goal_options=["m", "blue"], price_upper=40.0, product_type="t-shirt",
                product_category="shirts", product_title="Cotwell Cotton Long Sleeve T-Shirt",
                product_attributes=["cotton", "long sleeve", "slim fit"], product_price=30.0,
                chosen_options={"size": "m", "color": "blue"})
    args.update(over)
    return shop_reward(**args)


# --- reward ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("over, expected", [
    ({}, 1.0),                                                              # (2 + 2 + 1) / 5
    ({"goal_attributes": ["cotton", "waterproof"]}, 4 / 5),                 # one attribute missing
    ({"chosen_options": {"size": "l", "color": "blue"}}, 4 / 5),            # wrong size
    ({"chosen_options": {"size": "xl", "color": "red"}}, 3 / 5),            # both options wrong
    ({"chosen_options": {}}, 3 / 5),                                        # no option chosen
    ({"chosen_options": {"size": "M", "color": "Blue"}}, 1.0),              # case-insensitive
    ({"product_price": 45.0}, 4 / 5),                                       # over the bound
    ({"product_price": 40.0}, 1.0),                                         # bound is inclusive
    ({"goal_attributes": ["cotton", "waterproof"], "chosen_options": {"color": "blue"}, "product_price": 41.0},
     2 / 5),                                                                # 1 + 1 + 0
    # wrong type, same category, "shirt" shared with the title: r_type 0.5
    ({"product_type": "dress shirt", "product_title": "Cotwell Cotton Long Sleeve Dress Shirt"}, 0.5),
    # wrong category, no type word in the title: r_type 0
    ({"product_type": "frying pan", "product_category": "kitchen",
      "product_title": "Panora Cotton Long Sleeve Frying Pan"}, 0.0),
    # fuzzy: "long-sleeve" == "long sleeve" after normalisation; attribute found in the title only
    ({"goal_attributes": ["long-sleeve", "slim fit"], "product_attributes": ["long sleeve"],
      "product_title": "Cotwell Slim Fit T-Shirt"}, 1.0),
    # one attribute nowhere, one option fuzzy-missed ("12 oz" vs "12 ounce": Indel 61.5 < 85)
    ({"goal_attributes": ["cotton", "wool"], "goal_options": ["12 oz"], "chosen_options": {"pack": "12 ounce"}},
     2 / 4),
    # size is matched exactly: "7.5" is not "7" (token_set_ratio would say 100: {7} ⊂ {7, 5}) …
    ({"goal_options": ["7"], "chosen_options": {"size": "7.5"}}, 3 / 4),
    # … other dimensions fuzzily, so the same pair matches there
    ({"goal_options": ["7"], "chosen_options": {"width": "7.5"}}, 1.0),
    # an attribute found only in the features/description text (whole words)
    ({"goal_attributes": ["cotton", "oil free"], "product_text": "An oil-free formula."}, 1.0),
    ({"goal_attributes": ["cotton", "oil free"], "product_text": "Foil freezer bag."}, 4 / 5),
])
def test_reward_hand_computed(over, expected):
    score, parts = _reward(**over)
    assert score == pytest.approx(expected, abs=1e-12)
    assert parts["n_attributes"] == len(over.get("goal_attributes", ["cotton", "long sleeve"]))


def test_type_reward_rule():
    title = "Roastery Organic Ground Coffee"
    assert type_reward("ground coffee", "coffee", "ground coffee", "coffee", title) == 1.0
    # other category, 1 of 2 goal-type words in the title (0.5 > 0.2): 0.5
    assert type_reward("coffee table", "furniture", "ground coffee", "coffee", title) == 0.5
    # other category, 1 of 6 words (0.167, in (0, 0.2]): 0.1
    assert type_reward("organic tea pot warmer stand set", "kitchen", "ground coffee", "coffee", title) == 0.1
    # same category, no shared word: 0.0
    assert type_reward("cold brew concentrate", "coffee", "ground coffee", "coffee", title) == 0.0


def test_fuzzy_matching_threshold():
    # token_set_ratio on normalised strings; Indel ratio = 2·LCS / (|a| + |b|)
    assert fuzzy_match("machine washable", "machine wash")  # 2·12/28 = 85.7 > 85
    assert not fuzzy_match("washable", "wash")  # 2·4/12 = 66.7
    assert not fuzzy_match("dark roast", "medium roast")  # max(roast~roast dark 2·5/15, …) = 66.7
    assert fuzzy_match("Long-Sleeve", "long sleeve")
    assert fuzzy_match("blue", "navy blue")  # WebShop's quirk: a contained token set counts
    assert not fuzzy_match("s", "xs") and not fuzzy_match("m", "xl")  # 2·1/3 = 66.7
    assert count_attribute_matches(["cotton", "gluten free"], ["organic"], "Gluten-Free Bars") == 1
    assert count_option_matches(["m", "blue", "red"], {"size": "M", "color": "Blue"}) == 2
    assert count_option_matches(["blue"], {"color": "blue", "trim": "navy blue"}) == 1  # counted once


def test_generated_vocabulary_has_no_fuzzy_collisions():
    """Within a category no two attributes, and no two values of a fuzzily matched option dimension, are
    fuzzy-equal, so a wrong choice can never score as a right one."""
    for cat in CATEGORIES:
        pairs = [(a, b) for i, a in enumerate(cat.attributes) for b in cat.attributes[i + 1:]]
        for dim, values in cat.options.items():
            if dim != "size":
                pairs += [(a, b) for i, a in enumerate(values) for b in values[i + 1:]]
        bad = [(a, b) for a, b in pairs if fuzzy_match(a, b)]
        assert not bad, (cat.name, bad)


# --- expert and random agent ----------------------------------------------------------------------------

@pytest.mark.parametrize("split", SPLITS)
def test_expert_small(split):
    env = shop.make(split, seed=0, preset="small")
    infos = [play(env, k, expert)[0] for k in range(100)]
    rate = sum(i["won"] for i in infos) / len(infos)
    assert rate >= 0.95, rate
    assert all(i["score"] == 1.0 for i in infos if i["won"])


def test_expert_default_200_per_task_type():
    env = shop.make("train", seed=1, preset="default")
    by_type: dict[str, list[bool]] = {}
    for k in range(200):
        info, reward, total, _ = play(env, k, expert)
        by_type.setdefault(info["task_type"], []).append(info["won"])
        assert total == (10.0 if info["won"] else 0.0) and reward == total
    assert set(by_type) == set(shop.TASK_TYPES)
    assert sum(sum(v) for v in by_type.values()) / 200 >= 0.95
    for task_type, wins in by_type.items():
        assert sum(wins) / len(wins) >= 0.95, task_type


@pytest.mark.slow
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("preset", ["default", "small"])
def test_expert_200_every_split_and_type(split, preset):
    env = shop.make(split, seed=2, preset=preset)
    by_type: dict[str, list[bool]] = {}
    for k in range(200):
        info = play(env, k, expert)[0]
        by_type.setdefault(info["task_type"], []).append(info["won"])
    assert sum(sum(v) for v in by_type.values()) / 200 >= 0.95
    for task_type, wins in by_type.items():
        assert sum(wins) / len(wins) >= 0.95, task_type


@pytest.mark.parametrize("preset", ["small", "default"])
def test_random_agent_rarely_wins(preset):
    env = shop.make("train", seed=0, preset=preset)
    infos = [play(env, k, random_agent(random.Random(k)))[0] for k in range(200)]
    rate = sum(i["won"] for i in infos) / len(infos)
    print(f"random admissible-action agent, {preset}: success {rate:.3f}")
    assert rate < 0.15
    assert all(i["step"] <= shop.SPEC.max_steps for i in infos)


# --- determinism and splits -----------------------------------------------------------------------------

def test_same_seed_same_episode_different_seeds_differ():
    a, b = shop.make("train", seed=0, preset="small"), shop.make("train", seed=0, preset="small")
    for k in (0, 7, 123):
        assert play(a, k, expert)[3] == play(b, k, expert)[3]
    tasks = {a.reset(k)[1]["task"] for k in range(30)}
    assert len(tasks) >= 28
    c1, c2 = generate_catalogue(5, 200), generate_catalogue(5, 200)
    assert c1 == c2 and c1 != generate_catalogue(6, 200)
    # a different world seed gives a different task 0
    assert shop.make("train", seed=1).reset(0)[1]["task"] != shop.make("train", seed=0).reset(0)[1]["task"]


def test_splits_are_disjoint():
    catalogue, _ = shop.load_world(0, 1200, False)
    pools = split_pools(catalogue, 0)
    assert not set(pools["train"]) & set(pools["eval_seen"])
    unseen_types = {catalogue.products[i].ptype for i in pools["eval_unseen"]}
    train_types = {catalogue.products[i].ptype for i in pools["train"] + pools["eval_seen"]}
    assert unseen_types == set(catalogue.held_out_types.values()) and not unseen_types & train_types
    for split in SPLITS:
        env = shop.make(split, seed=0)
        targets = set()
        for k in range(50):
            env.reset(k)
            targets.add(env.goal.target)
        allowed = {catalogue.products[i].pid for i in pools[split]}
        assert targets <= allowed


def test_catalogue_shape():
    catalogue, _ = shop.load_world(0, 1200, False)
    assert len(catalogue.products) >= 1000
    assert len({p.category for p in catalogue.products}) >= 8
    assert len({p.pid for p in catalogue.products}) == len(catalogue.products)
    for p in catalogue.products:
        values = [v for vals in p.options.values() for v in vals]
        assert len(values) == len(set(values)) and all(v == v.lower() for v in values)
        assert p.attributes and p.price > 0 and p.description and p.reviews


# --- page flow ------------------------------------------------------------------------------------------

def test_navigation_next_prev_back_and_details():
    env = shop.make("train", seed=0, preset="default")
    obs, info = env.reset(0)
    assert info["admissible_actions"] == [pages.SEARCH_ACTION] and "[Search]" in obs
    obs, r, done, info = env.step("search[cotton shirt]")
    assert "Page 1 (Total results: 50)" in obs and "click[next >]" in info["admissible_actions"]
    assert "click[< prev]" not in info["admissible_actions"]
    first_ids = re.findall(r"\[(b0\w{8})\]", obs)
    assert len(first_ids) == 10
    obs, *_ , info = env.step("click[Next >]")
    assert "Page 2 (Total results: 50)" in obs and "click[< prev]" in info["admissible_actions"]
    second_ids = re.findall(r"\[(b0\w{8})\]", obs)
    assert len(second_ids) == 10 and not set(first_ids) & set(second_ids)
    obs, *_, info = env.step(f"click[{second_ids[3]}]")
    assert info["page"] == "item" and "[Buy Now]" in obs and "click[description]" in info["admissible_actions"]
    product = env.catalogue.products[env.catalogue.index_of(second_ids[3])]
    value = next(iter(product.options.values()))[0]
    obs, *_, info = env.step(f"click[{value.upper()}]")
    assert "Selected:" in obs and value in obs
    obs, *_, info = env.step("click[features]")
    assert info["page"] == "detail" and product.features[0] in obs
    obs, *_, info = env.step("click[< prev]")
    assert info["page"] == "item"
    obs, *_, info = env.step("click[< prev]")
    assert "Page 2" in obs
    obs, *_, info = env.step("click[< prev]")
    assert "Page 1" in obs and re.findall(r"\[(b0\w{8})\]", obs) == first_ids
    obs, r, done, info = env.step("click[back to search]")
    assert info["page"] == "search" and not done and info["step"] == 9 and r == 0.0


def test_last_page_has_no_next_and_no_results_page():
    env = shop.make("train", seed=0, preset="small")
    env.reset(0)
    obs, *_, info = env.step("search[shirt]")
    while "click[next >]" in info["admissible_actions"]:
        obs, *_, info = env.step("click[next >]")
    assert "Results page 5/5 (15 found)" in obs
    env.reset(0)
    obs, r, done, info = env.step("search[zzzz qqqq]")
    assert "no results" in obs and info["admissible_actions"] == ["click[back to search]"]


def test_buying_wrong_product_gives_zero_reward():
    env = shop.make("train", seed=0, preset="small")
    _, info = env.reset(4)
    goal = env.goal
    other = next(p for p in env.catalogue.products if p.category != goal.category)
    env.step(f"search[{other.title}]")
    obs, r, done, info = env.step(f"click[{other.pid}]")
    obs, r, done, info = env.step("click[buy now]")
    assert done and r == 0.0 and not info["won"] and info["score"] < 1.0
    assert info["reward_parts"]["r_type"] < 1.0


@pytest.mark.parametrize("preset", ["small", "default"])
def test_buy_without_options_scores_partial(preset):
    """Through the env: a satisfying product bought with no option chosen loses exactly the option terms."""
    env = shop.make("eval_seen", seed=0, preset=preset)
    checked = 0
    for k in range(20):
        env.reset(k)
        while env.page != "item":
            env.step(env.expert_action())
        obs, r, done, info = env.step("click[buy now]")
        n_attr, n_opt = len(env.goal.attributes), len(env.goal.options)
        assert done and info["score"] == pytest.approx((n_attr + 1) / (n_attr + n_opt + 1), abs=1e-12)
        assert r == 0.0 and not info["won"] and n_opt >= 1
        checked += 1
    assert checked == 20


# --- invalid and hostile actions; step cap ---------------------------------------------------------------

HOSTILE = ["x" * 10_000, "click[" + "y" * 10_000 + "]", "search[]", "click[]", "click[[next >]]",
           "请点击[buy now]", "click[购买]", "<action>click[buy now]</action>", "<script>alert(1)</script>",
           "click[buy now]; rm -rf /", "", "   ", "click[next >", "CLICK]next >[", None, 42,
           "search[" + "鞋" * 5000 + "]", "search[a[b]c]", "click[back to search]]"]


@pytest.mark.parametrize("preset", ["small", "default"])
@pytest.mark.parametrize("where", ["search", "results", "item"])
def test_invalid_and_hostile_actions_never_crash(preset, where):
    env = shop.make("train", seed=0, preset=preset)
    valid_on_search = ("search[" + "鞋" * 5000 + "]", "search[a[b]c]")
    for action in HOSTILE:
        env.reset(1)
        if where != "search":
            env.step("search[cotton]")
        if where == "item":
            env.step(env.admissible_actions()[-1])
        before, page = env._render()[0], env.page
        t0 = time.perf_counter()
        obs, r, done, info = env.step(action)
        assert time.perf_counter() - t0 < 0.5
        assert isinstance(obs, str) and r == 0.0 and not done
        if action in valid_on_search and where == "search":
            assert not info["invalid"] and env.page == "results"
        else:
            assert info["invalid"] and env.page == page
            assert obs == before + "\nInvalid action: not available on this page."


def test_invalid_action_keeps_page_and_counts_step():
    env = shop.make("train", seed=0, preset="small")
    obs0, _ = env.reset(2)
    obs, r, done, info = env.step("click[buy now]")
    assert obs == obs0 + "\n" + "Invalid action: not available on this page." and info["step"] == 1
    assert not done and info["invalid"] and info["admissible_actions"] == [pages.SEARCH_ACTION]


def test_max_steps_ends_episode():
    env = shop.make("train", seed=0, preset="small")
    env.reset(3)
    for i in range(shop.SPEC.max_steps):
        obs, r, done, info = env.step("click[nothing]")
        assert done == (i == shop.SPEC.max_steps - 1) and r == 0.0
    assert info["score"] == 0.0 and not info["won"] and info["admissible_actions"] == []
    obs, r, done, info = env.step("search[shirt]")  # after the end: no crash, nothing happens
    assert done and r == 0.0 and info["step"] == shop.SPEC.max_steps


# --- presets, errors, real data -------------------------------------------------------------------------

def test_small_preset_prompts_are_short():
    env = shop.make("train", seed=0, preset="small")
    longest = 0
    for k in range(40):
        obs, info = env.reset(k)
        done = False
        while True:
            words = len(info["task"].split()) + len(obs.split()) + len(" ".join(info["admissible_actions"]).split())
            longest = max(longest, words)
            if done:
                break
            obs, _, done, info = env.step(env.expert_action())
    assert longest <= 110, longest


def test_make_validates_arguments():
    with pytest.raises(ValueError, match="preset"):
        shop.make(preset="huge")
    with pytest.raises(ValueError, match="size_options"):
        shop.make(n_rooms=3)
    with pytest.raises(ValueError, match="split"):
        shop.make(split="test")
    with pytest.raises(ValueError, match="results_per_page"):
        shop.make(results_per_page=0)
    with pytest.raises(TypeError, match="seed"):
        shop.make(seed="0")
    with pytest.raises(TypeError, match="seed"):
        shop.make(preset="small").reset("1")
    env = shop.make(preset="small")
    assert env.reset(np.int64(4))[1]["task"] == env.reset(4)[1]["task"]
    env = envs.make("shop", split="eval_unseen", seed=0, preset="small", results_per_page=5)
    env.reset(0)
    obs, *_ = env.step("search[shirt]")
    assert "Results page 1/3 (15 found)" in obs and obs.count("\n[p") == 5
    assert envs.spec("shop") is shop.SPEC and shop.SPEC.max_steps == 15 and shop.SPEC.success_reward == 10


def _write_real_files(folder: Path, human: bool) -> None:
    products = [
        {"asin": "B000000001", "name": "Acme Organic Green Tea Bags, 100 Count", "category": "food",
         "query": "green tea", "product_category": "Grocery › Beverages › Tea",
         "pricing": "$12.99", "full_description": "Organic green tea.",
         "small_description": ["Organic", "Caffeine"],
         "customization_options": {"Size": [{"value": "100 Count", "image": None},
                                            {"value": "50 Count", "image": None}],
                                   "Flavor Name": [{"value": "Mint/Lemon"}, {"value": "Jasmine"}]}},
        {"asin": "B000000002", "name": "Bolt Wireless Earbuds with Charging Case", "category": "electronics",
         "query": "wireless earbuds", "product_category": "Electronics › Headphones",
         "pricing": "$25.00 - $35.00", "full_description": "Bluetooth earbuds.",
         "small_description": "Bluetooth 5.0\nLong battery", "customization_options": {"Color": [
             {"value": "Black"}, {"value": "White"}]}},
        {"asin": "B000000003", "name": "Cozy Fleece Throw Blanket", "category": "furniture",
         "query": "throw blanket", "product_category": "Home › Bedding", "pricing": "",
         "full_description": "", "small_description": [], "customization_options": None},
        {"asin": "nan", "name": "broken row"},
    ]
    attrs = {"B000000001": {"attributes": ["organic", "caffeine"], "instruction":
                            "i want organic green tea bags", "instruction_attributes": ["organic"]},
             "B000000002": {"attributes": ["wireless", "long battery life"], "instruction":
                            "i need wireless earbuds with long battery life.",
                            "instruction_attributes": ["wireless", "long battery life"]},
             "B000000003": {"attributes": ["fleece"], "instruction": "find a fleece throw blanket",
                            "instruction_attributes": ["fleece"]}}
    (folder / "items_shuffle_1000.json").write_text(json.dumps(products))
    (folder / "items_ins_v2_1000.json").write_text(json.dumps(attrs))
    if human:
        goals = {"B000000002": [{"instruction": "i need white wireless earbuds", "instruction_attributes":
                                 ["wireless"], "instruction_options": ["white"]}]}
        (folder / "items_human_ins.json").write_text(json.dumps(goals))


def test_real_loader_synthetic_goals(tmp_path):
    from envs.shop import real
    _write_real_files(tmp_path, human=False)
    catalogue, goals = real.load(tmp_path, seed=0)
    assert [p.pid for p in catalogue.products] == ["b000000001", "b000000002", "b000000003"]
    tea = catalogue.products[0]
    assert tea.options == {"size": ("100 count", "50 count"), "flavor name": ("mint | lemon", "jasmine")}
    assert catalogue.products[1].price == 25.0 and catalogue.products[2].price == 100.0
    assert catalogue.products[1].features == ("Bluetooth 5.0", "Long battery")
    # 4 option combinations for the tea, 2 for the earbuds, 1 for the blanket
    assert len(goals) == 7
    assert goals[0].instruction.startswith("i want organic green tea bags with flavor name: mint | lemon, "
                                           "and size: 100 count, and price lower than")
    bound = float(re.search(r"lower than (\d+\.\d+) dollars", goals[0].instruction).group(1))
    assert bound in (30.0, 40.0, 50.0) and goals[0].price_upper == bound
    for split in SPLITS:
        env = envs.make("webshop", split=split, seed=0, data_dir=str(tmp_path), preset="small")
        for k in range(3):
            info = play(env, k, expert)[0]
            assert info["won"] and info["score"] == 1.0


def test_real_loader_human_goals_and_missing_data(tmp_path, monkeypatch):
    from envs.shop import real
    _write_real_files(tmp_path, human=True)
    monkeypatch.setenv("WEBSHOP_DATA", str(tmp_path))
    env = real.make("train")
    obs, info = env.reset(0)
    assert info["task"].startswith("i need white wireless earbuds") and info["task_type"] == "electronics"
    assert env.goal.options == {"option 0": "white"}
    assert play(env, 0, expert)[0]["won"]
    monkeypatch.delenv("WEBSHOP_DATA")
    with pytest.raises(FileNotFoundError, match="WEBSHOP_DATA"):
        real.make("train")
    with pytest.raises(FileNotFoundError, match="WEBSHOP_DATA"):
        real.make("train", data_dir=str(tmp_path / "nowhere"))


def test_skill_files():
    names = {p.stem for p in SKILLS.glob("*.md")}
    assert names == {"general", *shop.TASK_TYPES}
    assert len(CATEGORIES) == len(shop.TASK_TYPES) >= 8
    for path in SKILLS.glob("*.md"):
        body = "\n".join(line for line in path.read_text().splitlines() if not line.startswith("<!--"))
        assert 10 <= len(body.split()) <= 60, path.name
    text = envs.retrieve_skills("shop", task="i need waterproof hiking boots", task_type=None, strategy="keyword")
    assert "Shop: shoes" in text


@pytest.mark.parametrize("split", SPLITS)
def test_keyword_retrieval_picks_the_goal_category_on_the_small_preset(split):
    """Reading only the goal sentence, the keyword strategy chooses the goal's own category (the generator's task_type)
    on every small-preset goal checked, so it gives the task_type text (shop_seeds runs its ablation cell once)."""
    env = envs.make("shop", split=split, seed=0, preset="small")
    for k in range(1000):
        _, info = env.reset(seed=k)
        by_keyword = envs.retrieve_skills("shop", task=info["task"], task_type=None, strategy="keyword")
        assert by_keyword == envs.retrieve_skills("shop", task="", task_type=info["task_type"]), info["task"]


def test_through_prompt_and_parser():
    """The trainer's path: prompt from info, reply parsed by envs.parse_reply, action played."""
    env = envs.make("shop", split="train", seed=0, preset="small")
    obs, info = env.reset(9)
    prompt = envs.build_prompt("shop", task=info["task"], observation=obs,
                               admissible_actions=info["admissible_actions"], history=[])
    assert info["task"] in prompt and "search[<your query>]" in prompt
    reply = envs.parse_reply("shop", f"<think>search it</think><action>{env.expert_action()}</action>")
    assert reply.valid_format
    obs, r, done, info = env.step(reply.action)
    assert info["page"] == "results" and not info["invalid"]
