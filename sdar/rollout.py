"""Multi-turn rollouts: a batch of tasks × a group of G episodes, all active episodes of the batch
generated in one engine call per turn.

Per turn: prompt (the chat template over ``envs.build_prompt``), sample, parse, step. Each turn is one
training :class:`Sample` carrying its episode's total reward minus the format penalty of that turn
(GRPO conventions, DESIGN §1). Episodes of one group share the environment seed. The engine's log-probs
of the sampled tokens are kept (the trainer logs its mismatch with its own forward).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import envs
from envs.prompts import with_skills
from sdar.models import chat_prompt_ids

SEARCH_ENVS = ("search_qa",)


@dataclass
class Sample:
    """One agent turn = one training sample."""

    prompt_ids: list[int]
    response_ids: list[int]
    engine_logprobs: list[float]
    teacher_prompt_ids: list[int] | None  # the skill-prefixed prompt (teacher methods only)
    group: int  # index of the task in the batch; group members share the env seed
    episode: int
    turn: int
    valid_format: bool
    reward: float = 0.0  # episode reward − format penalty of this turn (set when the episode ends)


@dataclass
class Episode:
    group: int
    task_seed: int
    task: str = ""
    task_type: str = ""
    reward: float = 0.0
    won: bool = False
    score: float = 0.0
    turns: int = 0
    invalid_turns: int = 0
    skills: str = ""
    samples: list[Sample] = field(default_factory=list)


class _SharedTransitions:
    """One episode's view of an environment whose transitions are memoised across the episodes of a
    rollout: GRPO group members replay the same task, so identical (task seed, action prefix) pairs
    are stepped once. Environments are deterministic given (seed, actions) (the envs contract), so
    a memo hit returns exactly what stepping would have. On a miss the underlying environment is
    brought to the episode's state (reset + replay of the actions it skipped), then stepped."""

    def __init__(self, env, seed: int, memo: dict):
        self.env, self.seed, self.memo = env, seed, memo
        self.actions: list[str] = []
        self.synced = -1  # actions the real env has executed since its last reset(seed); -1: not reset

    def reset(self):
        key = (self.seed,)
        if key not in self.memo:
            self.memo[key] = self.env.reset(self.seed)
            self.synced = 0
        return self.memo[key]

    def step(self, action: str):
        self.actions.append(action)
        key = (self.seed, *self.actions)
        if key not in self.memo:
            if self.synced != len(self.actions) - 1:
                self.env.reset(self.seed)
                for a in self.actions[:-1]:
                    self.env.step(a)
            self.memo[key] = self.env.step(action)
            self.synced = len(self.actions)
        return self.memo[key]

    def privileged_hint(self) -> str:
        """The task's ``privileged_hint()`` (memoised like the reset it follows)."""
        key = ("hint", self.seed)
        if key not in self.memo:
            if self.synced != 0:
                self.env.reset(self.seed)
                self.synced = 0
            self.memo[key] = self.env.privileged_hint()
        return self.memo[key]


def env_action(env_name: str, reply) -> str:
    """The string the environment's ``step`` takes for a parsed reply (search: ``search[q]``/``answer[a]``)."""
    if reply.action is None:
        return ""
    if env_name in SEARCH_ENVS:
        return f"{reply.kind}[{reply.action}]" if reply.kind in ("search", "answer") else reply.action
    return reply.action


def rollout(engine, tokenizer, env_pool: list, *, env_name: str, task_seeds: list[int], group_size: int,
            max_turns: int, temperature: float, max_new_tokens: int, top_p: float = 1.0,
            teacher_skills: bool = False, student_skills: bool = False, skill_strategy: str = "task_type",
            skill_max_chars: int | None = 400, max_prompt_tokens: int | None = None, seed: int = 0,
            history_turns: int | None = None) -> tuple[list[Sample], list[Episode]]:
    """Play ``len(task_seeds) × group_size`` episodes; returns (samples, episodes).

    ``env_pool`` holds at least that many environment instances (reset here). ``teacher_skills``:
    also build each turn's skill-prefixed teacher prompt; ``student_skills``: the student sees the
    skills (skill_grpo, or evaluating the privileged policy). ``seed`` seeds the engine's sampling.
    """
    spec = envs.spec(env_name)
    n = len(task_seeds) * group_size
    if len(env_pool) < n:
        raise ValueError(f"env_pool: need {n} environments, got {len(env_pool)}")
    k = spec.history_turns if history_turns is None else history_turns
    stops = _stop_ids(tokenizer)
    rng = random.Random(seed)  # sampling seeds
    skill_rng = random.Random(seed + 0x5EED)  # skill retrieval (kept apart: methods share sampling seeds)
    episodes, state, memo = [], [], {}
    pool = [_SharedTransitions(env_pool[i], task_seeds[i // group_size], memo) for i in range(n)]
    for i in range(n):
        g = i // group_size
        obs, info = pool[i].reset()
        ep = Episode(group=g, task_seed=task_seeds[g], task=info["task"], task_type=info.get("task_type", ""))
        if teacher_skills or student_skills:
            hint = pool[i].privileged_hint() if skill_strategy == "oracle" else None
            ep.skills = envs.retrieve_skills(env_name, task=ep.task, task_type=ep.task_type, strategy=skill_strategy,
                                             rng=random.Random(skill_rng.random()), max_chars=skill_max_chars,
                                             hint=hint)
        episodes.append(ep)
        state.append({"obs": obs, "info": info, "history": [], "done": False})

    for turn in range(max_turns):
        active = [i for i in range(n) if not state[i]["done"]]
        if not active:
            break
        prompts, teacher_prompts = [], []
        for i in active:
            st, ep = state[i], episodes[i]
            text = envs.build_prompt(env_name, task=ep.task, observation=st["obs"],
                                     admissible_actions=st["info"].get("admissible_actions", []),
                                     history=st["history"], history_turns=k, step=turn)
            student_text = with_skills(text, ep.skills) if student_skills else text
            prompts.append(_truncate(chat_prompt_ids(tokenizer, student_text), max_prompt_tokens))
            teacher_prompts.append(_truncate(chat_prompt_ids(tokenizer, with_skills(text, ep.skills)),
                                             max_prompt_tokens) if teacher_skills else None)
        gens = engine.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                               seed=rng.randrange(2**31), stop_token_ids=stops)
        for i, prompt, tprompt, gen in zip(active, prompts, teacher_prompts, gens):
            st, ep = state[i], episodes[i]
            reply = envs.parse_reply(env_name, gen.text)
            action = env_action(env_name, reply)
            obs, reward, done, info = pool[i].step(action)
            resp, lps = list(gen.token_ids), list(gen.logprobs)
            if gen.finish_reason == "stop" and getattr(gen, "stop_token_id", None) is not None:
                resp.append(gen.stop_token_id)  # train on the stop token too (the policy learns to end)
                lps.append(gen.stop_logprob)
            if not resp:  # an immediate-stop reply with no recorded stop token: nothing to train on
                resp, lps = [stops[0]], [0.0]
            ep.samples.append(Sample(prompt, resp, lps, tprompt, ep.group, i, turn, bool(reply.valid_format)))
            ep.reward += float(reward)
            ep.turns += 1
            ep.invalid_turns += int(not reply.valid_format)
            st["history"].append((st["obs"], action if action else gen.text.strip()[:100]))
            st["obs"], st["info"] = obs, info
            ep.won, ep.score = bool(info.get("won", False)), float(info.get("score", float(info.get("won", 0))))
            st["done"] = bool(done)

    samples = []
    for ep in episodes:
        for s in ep.samples:
            s.reward = ep.reward - (0.0 if s.valid_format else spec.format_penalty)
        samples += ep.samples
    return samples, episodes


def episode_metrics(episodes: list[Episode], prefix: str = "") -> dict:
    n = max(len(episodes), 1)
    return {f"{prefix}success": sum(e.won for e in episodes) / n,
            f"{prefix}score": sum(e.score for e in episodes) / n,
            f"{prefix}reward": sum(e.reward for e in episodes) / n,
            f"{prefix}turns": sum(e.turns for e in episodes) / n,
            f"{prefix}invalid_frac": sum(e.invalid_turns for e in episodes) / max(sum(e.turns for e in episodes), 1)}


def _truncate(ids: list[int], cap: int | None) -> list[int]:
    return ids if cap is None or len(ids) <= cap else ids[-cap:]


def _stop_ids(tokenizer) -> list[int]:
    from sdar.models import stop_token_ids

    return stop_token_ids(tokenizer)


__all__ = ["Episode", "Sample", "env_action", "episode_metrics", "rollout"]
