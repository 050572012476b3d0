"""Rollout semantics on a scripted environment and engine: one engine call per turn for all active
episodes, per-turn rewards (episode reward minus that turn's format penalty), stop tokens kept, and
the shared-transition memo returning exactly what stepping every episode would."""
import random

import pytest

from sdar.engines import Generation
from sdar.rollout import _SharedTransitions, rollout


class ToyEnv:
    """Deterministic given (seed, actions): win by playing 'go a' then 'go b' (reward 10)."""

    real_steps = 0

    def reset(self, seed):
        self.seed, self.actions = seed, []
        return f"start {seed}", self._info(False)

    def _info(self, won):
        return {"task": "reach b", "task_type": "toy", "admissible_actions": ["go a", "go b"], "won": won,
                "score": float(won), "step": len(self.actions)}

    def privileged_hint(self):
        return f"hint {self.seed} after {len(self.actions)} actions"

    def step(self, action):
        ToyEnv.real_steps += 1
        self.actions.append(action)
        won = self.actions[-2:] == ["go a", "go b"]
        done = won or len(self.actions) >= 3
        return f"obs {self.seed} {'/'.join(self.actions)}", 10.0 if won else 0.0, done, self._info(won)


class ToyTokenizer:
    eos_token_id = 1
    pad_token_id = 0
    unk_token_id = None

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return messages[0]["content"]

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + (ord(c) % 50) for c in text[:20]]}

    def convert_tokens_to_ids(self, tok):
        return 1


class ScriptedEngine:
    """Replies from a per-call random script; records the batch size of every call."""

    def __init__(self, seed=0, scripted=False):
        self.calls, self.rng, self.scripted = [], random.Random(seed), scripted

    def generate(self, prompts, *, max_new_tokens, temperature, top_p=1.0, seed=None, stop_token_ids=None):
        self.calls.append(len(prompts))
        out = []
        for _ in prompts:
            r = (0.0 if len(self.calls) == 1 else 0.5) if self.scripted else self.rng.random()
            text = ("<think>x</think><action>go a</action>" if r < 0.4 else
                    "<think>x</think><action>go b</action>" if r < 0.8 else "garbage")
            out.append(Generation([5, 6, 7], [-0.1, -0.2, -0.3], text, "stop", stop_token_id=1, stop_logprob=-0.5))
        return out


def _play(memo_on, seed=0, scripted=False):
    ToyEnv.real_steps = 0
    engine = ScriptedEngine(seed, scripted)
    pool = [ToyEnv() for _ in range(6)]
    if not memo_on:  # a memo that never hits: every episode steps its own env
        import sdar.rollout as r

        orig = r._SharedTransitions.step
        r._SharedTransitions.step = lambda self, a: (self.actions.append(a), self.env.step(a))[1]
        orig_reset = r._SharedTransitions.reset
        r._SharedTransitions.reset = lambda self: self.env.reset(self.seed)
    try:
        samples, episodes = rollout(engine, ToyTokenizer(), pool, env_name="household", task_seeds=[11, 12],
                                    group_size=3, max_turns=4, temperature=1.0, max_new_tokens=8)
    finally:
        if not memo_on:
            r._SharedTransitions.step, r._SharedTransitions.reset = orig, orig_reset
    return samples, episodes, engine.calls, ToyEnv.real_steps


def test_rollout_rewards_groups_and_batching():
    samples, episodes, calls, _ = _play(True)
    assert calls[0] == 6 and all(a >= b for a, b in zip(calls, calls[1:]))  # one call per turn, active episodes
    assert len(samples) == sum(e.turns for e in episodes) == sum(calls)
    for e in episodes:
        assert e.won == (e.reward == 10.0)
        for s in e.samples:
            assert s.group == e.group and s.response_ids == [5, 6, 7, 1]  # the stop token is trained on
            assert s.engine_logprobs == [-0.1, -0.2, -0.3, -0.5]
            assert s.reward == pytest.approx(e.reward - (0.0 if s.valid_format else 0.1))
    assert [e.group for e in episodes] == [0, 0, 0, 1, 1, 1] and {e.task_seed for e in episodes} == {11, 12}


@pytest.mark.parametrize("seed", [0, 3, 7])
def test_shared_transitions_change_nothing_but_the_work(seed):
    with_memo = _play(True, seed=seed)
    without = _play(False, seed=seed)
    key = lambda s: (s.prompt_ids, s.response_ids, s.reward, s.group, s.turn, s.valid_format)  # noqa: E731
    assert [key(s) for s in with_memo[0]] == [key(s) for s in without[0]]
    assert with_memo[3] <= without[3]  # never more real environment steps


def test_identical_group_members_step_once():
    samples, episodes, _, steps = _play(True, scripted=True)  # every member plays "go a", "go b"
    assert all(e.won for e in episodes) and steps == 2 * 2  # 2 groups × 2 steps, not 6 episodes × 2


def test_shared_transitions_replay_on_divergence():
    memo = {}
    a, b = _SharedTransitions(ToyEnv(), 5, memo), _SharedTransitions(ToyEnv(), 5, memo)
    a.reset(), b.reset()
    assert a.step("go a") == b.step("go a")  # b hits the memo; its env has not moved
    assert not hasattr(b.env, "actions")
    out = b.step("go b")  # miss: b's env replays "go a" first
    assert out[1] == 10.0 and out[2] and b.env.actions == ["go a", "go b"]


def test_privileged_hint_is_taken_at_the_reset_state_and_memoised():
    memo = {}
    a, b, c = (_SharedTransitions(ToyEnv(), 5, memo) for _ in range(3))
    a.reset(), b.reset()
    a.step("go a")  # a's env has moved on; b's env was never reset (b hit the memo)
    assert b.privileged_hint() == "hint 5 after 0 actions" and b.synced == 0
    c.reset()
    assert c.privileged_hint() == "hint 5 after 0 actions" and not hasattr(c.env, "seed")  # a memo hit


def test_oracle_rollout_gives_each_episode_its_own_task_hint():
    import envs

    pool = [envs.make("household", "train", 0, preset="small") for _ in range(4)]
    _, episodes = rollout(ScriptedEngine(), ToyTokenizer(), pool, env_name="household", task_seeds=[3, 4],
                          group_size=2, max_turns=1, temperature=1.0, max_new_tokens=8, teacher_skills=True,
                          skill_strategy="oracle")
    fresh = envs.make("household", "train", 0, preset="small")
    for ep in episodes:
        fresh.reset(ep.task_seed)
        hint = fresh.privileged_hint()
        assert hint and ep.skills.startswith(hint + "\n\n")
    assert episodes[0].skills != episodes[2].skills
