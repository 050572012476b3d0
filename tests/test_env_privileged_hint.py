"""``Env.privileged_hint``: instance knowledge the observation lacks (the ``oracle`` teacher context),
checked against the environments themselves: playing the hint works, the hinted product wins."""
from __future__ import annotations

import pytest

import envs


@pytest.mark.parametrize("seed", range(8))
def test_household_hint_says_where_the_goal_objects_are(seed):
    env = envs.make("household", "train", 0, preset="small")
    obs, info = env.reset(seed)
    hint = env.privileged_hint()
    places = [s.removesuffix(".").split(" is at ") for s in hint.split(". ") if s]
    assert places and all(obj.split()[0] in info["task"] for obj, _ in places)
    assert all(obj.split()[0] not in obs.split("Your task is to:")[0] for obj, _ in places)  # not in view
    for obj, where in places:  # go there (open it if closed) and take it: the hint is right
        info = env.step(f"go to {where}")[3]
        if f"open {where}" in info["admissible_actions"]:
            env.step(f"open {where}")
        obs, _, _, _ = env.step(f"take {obj} from {where}")
        assert obs.startswith(f"You pick up the {obj}"), (hint, obs)
        env.step(f"move {obj} to {where}")  # hands free for the second object of pick-two tasks


def test_shop_hint_names_a_product_that_scores_one():
    env = envs.make("shop", "train", 0, preset="small")
    for seed in range(5):
        env.reset(seed)
        pid = env.goal.target
        title = env.catalogue.products[env.catalogue.index_of(pid)].title
        assert env.privileged_hint() == f"The product to buy: {pid} ({title})."
        assert env.achievable(env.catalogue.index_of(pid))[0] == 1.0


def test_search_hint_lists_the_gold_chain():
    env = envs.make("search_qa", "train", 0, preset="small")
    for seed in range(5):
        env.reset(seed)
        names = [env.world.name(e) for e in env.question.chain]
        assert names and env.privileged_hint() == f"Search for: {'; '.join(names)}."
        for name in names:  # each hinted entity is found by searching its name
            assert name in env.step(f"search[{name}]")[0]


def test_hint_before_reset_is_an_error():
    for name in ("shop", "search_qa"):
        with pytest.raises(RuntimeError, match="reset"):
            envs.make(name, "train", 0, preset="small").privileged_hint()
    with pytest.raises(RuntimeError, match="reset"):
        envs.make("household", "train", 0, preset="small").privileged_hint()
