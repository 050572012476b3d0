"""Reply parsing: turn a model's reply text into an action and a ``valid_format`` flag.

Formats (the published agentic-RL conventions):

- household / alfworld / shop / webshop: ``<think>…</think><action>…</action>`` — exactly one think
  block followed by exactly one action block.
- search_qa: ``<think>…</think>`` followed by exactly one of ``<search>…</search>`` or
  ``<answer>…</answer>`` (both → invalid).

A reply is invalid when a required tag is missing, repeated or out of order, when the action text is
empty, or when the reply contains CJK characters. An invalid reply still yields a best-effort action
(the text inside the first action-like block, or after an unclosed opening tag), so the trainer can
play it and apply the format penalty. The parser only locates literal tags with ``str.find`` /
``str.count`` (linear time, no backtracking) and never interprets the text: code or markup in a reply
is just text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

ACTION_ENVS = ("household", "alfworld", "shop", "webshop")
SEARCH_ENVS = ("search_qa",)
MAX_ACTION_CHARS = 200

# Hiragana/katakana, CJK ext-A, CJK unified, Hangul, CJK compatibility, full-width punctuation.
# A single character class: matching is linear in the text length.
_CJK = re.compile("[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")


@dataclass(frozen=True)
class Reply:
    """A parsed reply.

    action: the action text (stripped, whitespace collapsed, at most ``MAX_ACTION_CHARS`` characters),
        or None when none could be extracted. For search_qa it is the query or the answer text.
    valid_format: True iff the reply follows the environment's format exactly.
    kind: "action" (household/shop), "search" or "answer" (search_qa); None when the reply is invalid.
    think: the text inside ``<think>…</think>`` (stripped) when present, else None.
    """

    action: str | None
    valid_format: bool
    kind: str | None
    think: str | None


def _clean(text: str) -> str:
    return " ".join(text.split())[:MAX_ACTION_CHARS].strip()


def _block(text: str, tag: str, begin: int = 0) -> tuple[int, int, str | None]:
    """(start of the opening tag, end of the closing tag, inner text) of the first ``<tag>…</tag>`` at or
    after ``begin``.

    Start is -1 when the opening tag is absent. An opening tag without a closing tag gives end -1 and the
    text after the opening tag as the inner text (best effort)."""
    open_tag, close_tag = f"<{tag}>", f"</{tag}>"
    start = text.find(open_tag, begin)
    if start < 0:
        return -1, -1, None
    inner_start = start + len(open_tag)
    close = text.find(close_tag, inner_start)
    if close < 0:
        return start, -1, text[inner_start:]
    return start, close + len(close_tag), text[inner_start:close]


def _once(text: str, tag: str) -> bool:
    return text.count(f"<{tag}>") == 1 and text.count(f"</{tag}>") == 1


def parse_reply(env_name: str, text: str) -> Reply:
    """Parse ``text`` (a model reply) for environment ``env_name``.

    Args:
        env_name: one of household, alfworld, shop, webshop, search_qa.
        text: the raw reply (any string; never executed or evaluated).
    Returns:
        a :class:`Reply`.
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected str, got {type(text).__name__}")
    if env_name in ACTION_ENVS:
        action_tags = ("action",)
    elif env_name in SEARCH_ENVS:
        action_tags = ("search", "answer")
    else:
        raise ValueError(f"env_name: expected one of {ACTION_ENVS + SEARCH_ENVS}, got {env_name!r}")

    _, t_end, think = _block(text, "think")
    think_ok = _once(text, "think") and t_end >= 0
    think = think.strip() if (think is not None and t_end >= 0) else None

    # Best-effort action: the earliest action-like block after the think block, else anywhere.
    found = []
    for begin in ((t_end, 0) if t_end > 0 else (0,)):
        for tag in action_tags:
            start, end, inner = _block(text, tag, begin)
            if start >= 0:
                found.append((start, end, inner, tag))
        if found:
            break
    if not found:
        return Reply(action=None, valid_format=False, kind=None, think=think)
    found.sort(key=lambda item: item[0])
    start, end, inner, tag = found[0]
    action = _clean(inner) if inner is not None else ""
    action = action or None

    valid = (
        think_ok
        and _once(text, tag)
        and not any(f"<{other}>" in text or f"</{other}>" in text for other in action_tags if other != tag)
        and end >= 0
        and start >= t_end  # the think block comes first
        and action is not None
        and _CJK.search(text) is None
    )
    kind = ("action" if tag == "action" else tag) if valid else None
    return Reply(action=action, valid_format=valid, kind=kind, think=think)


def env_action(env_name: str, reply: Reply) -> str | None:
    """The string to pass to ``env.step`` for a parsed reply (None when no action was extracted).

    household/shop: the action text itself. search_qa: ``"search[<query>]"`` or ``"answer[<text>]"``
    for a valid reply; an invalid reply (``kind`` None) passes its best-effort text unchanged, which the
    search environment answers with an invalid-action observation (as Search-R1 does)."""
    if reply.action is None:
        return None
    if env_name in SEARCH_ENVS:
        return f"{reply.kind}[{reply.action}]" if reply.kind in ("search", "answer") else reply.action
    return reply.action


__all__ = ["MAX_ACTION_CHARS", "Reply", "env_action", "parse_reply"]
