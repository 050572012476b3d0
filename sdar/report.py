"""``sdar report RUNS_DIR --out docs/``: aggregate an experiment's runs into ``docs/RESULTS.md``.

Reads ``RUNS_DIR/runs/*/{cell.json, metrics.jsonl, done.json, teacher_eval.json}`` and
``RUNS_DIR/models/*/sft/sft_report.json`` (written by :mod:`sdar.experiment`) and writes, between the
``<!-- REPORT:BEGIN -->`` / ``<!-- REPORT:END -->`` markers of ``OUT/RESULTS.md`` (the hand-written
text around them is kept):

- the step-0 table: SFT student vs skill-prompted teacher success per env (mean ± std over seeds);
- per grid and env, the final held-out evaluation (mean ± std over seeds; std is the sample standard
  deviation, ddof = 1, "–" for a single seed): success, the shop score, success per household task
  type / search question kind, with skills in the prompt (Skill-GRPO's own evaluation, or the teacher-context
  evaluation of ``teacher_eval.json`` when the grid sets ``teacher_eval``);
- success minus ``grpo``'s paired by seed (mean ± std over seeds, each seed's difference and the paired t),
  at the last evaluation and averaged over the evaluations after step 0 (``grpo`` of the grid, else of ``main``);
- learning curves (eval success vs step; mean line, ± std band over seeds) and entropy curves, PNG
  under ``OUT/results/``;
- gate statistics over training for the teacher-gated methods (``sdar`` variants, ``grpo_opsd``):
  gate mean on positive-gap and negative-gap tokens, fraction of negative-gap tokens, mean gap —
  averaged over all steps and seeds, and as curves;
- wall clock per step per method (mean over steps and seeds) and its ratio to ``grpo``.

Only finished cells (``done.json``) enter the tables; unfinished ones are counted.
"""
from __future__ import annotations

import glob
import json
import math
import os
from collections import defaultdict

BEGIN, END = "<!-- REPORT:BEGIN -->", "<!-- REPORT:END -->"
GATE_KEYS = ("gate_pos_gap_mean", "gate_neg_gap_mean", "neg_gap_frac", "gap_mean")
GATED_METHODS = ("sdar", "grpo_opsd", "opsd")


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof = 1; None for fewer than two values)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("values: expected at least one number")
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def fmt(values: list[float]) -> str:
    if not values:
        return ""
    m, s = mean_std(values)
    return f"{m:.3f}" if s is None else f"{m:.3f} ± {s:.3f}"


def load_json(path: str):
    """A JSON file's content; a malformed file is a ValueError naming it (not a bare decode error)."""
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: expected valid JSON ({e})") from e


def read_jsonl(path: str) -> list[dict]:
    """The rows of a JSONL file ([] when it does not exist yet)."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def collect(runs_dir: str) -> dict:
    """{"runs": [run dicts], "unfinished": [names], "warm": {env: {"student": [..], "teacher": [..]}}}."""
    if not os.path.isdir(runs_dir):
        raise ValueError(f"runs_dir: {runs_dir!r} is not a directory")
    runs, unfinished = [], []
    for cell_path in sorted(glob.glob(os.path.join(runs_dir, "runs", "*", "cell.json"))):
        rdir = os.path.dirname(cell_path)
        cell = load_json(cell_path)
        if not os.path.exists(os.path.join(rdir, "done.json")):
            unfinished.append(cell["name"])
            continue
        teacher = os.path.join(rdir, "teacher_eval.json")
        runs.append({**cell, "done": load_json(os.path.join(rdir, "done.json")),
                     "teacher_eval": load_json(teacher) if os.path.exists(teacher) else None,
                     "metrics": read_jsonl(os.path.join(rdir, "metrics.jsonl")),
                     "method": cell["config"]["method"], "gate": cell["config"]["gate"]})
    warm = defaultdict(lambda: {"student": [], "teacher": []})
    for wdir in sorted(glob.glob(os.path.join(runs_dir, "models", "*"))):
        env = os.path.basename(wdir).rsplit("__s", 1)[0]
        sft = os.path.join(wdir, "sft", "sft_report.json")
        pairs = [(sft, "student", "student"), (sft, "teacher", "teacher")] if os.path.exists(sft) else [
            (os.path.join(wdir, "step0_student.json"), None, "student"),
            (os.path.join(wdir, "step0_teacher.json"), None, "teacher")]
        for path, key, who in pairs:
            if os.path.exists(path):
                data = load_json(path)
                data = data.get(key) if key else data
                if isinstance(data, dict) and "success" in data:
                    warm[env][who].append(data["success"])
    return {"runs": runs, "unfinished": unfinished, "warm": dict(warm)}


def _rows(runs: list[dict], group: str, env: str) -> dict[str, list[dict]]:
    rows = defaultdict(list)
    for r in runs:
        if group in r["groups"] and r["env"] == env:
            rows[r["row"].split("__", 1)[1]].append(r)
    return dict(rows)


def _with_skills(run: dict) -> float | None:
    """The final model's success with skills in its prompt: skill_grpo's own evaluation, else the runner's
    teacher-context evaluation (``teacher_eval.json``)."""
    final = run["done"]["final_eval"]
    if "eval_skills_success" in final:
        return final["eval_skills_success"]
    return (run.get("teacher_eval") or {}).get("success")


def final_table(runs: list[dict], group: str, env: str) -> str:
    """Markdown table of the final eval (mean ± std over seeds) of ``group`` on ``env``."""
    rows = _rows(runs, group, env)
    if not rows:
        return ""
    finals = [r["done"]["final_eval"] for rs in rows.values() for r in rs]
    types = sorted({t for e in finals for t in e.get("eval_success_by_type", {})})
    has_score = any(r["config"]["env"] in ("shop", "webshop") for rs in rows.values() for r in rs)
    has_skills = any(_with_skills(r) is not None for rs in rows.values() for r in rs)
    head = ["config", "seeds", "success"] + (["score"] if has_score else []) + (
        ["success with skills"] if has_skills else []) + types
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rs in rows.items():
        ev = [r["done"]["final_eval"] for r in rs]
        cols = [name, str(len(rs)), fmt([e["eval_success"] for e in ev if "eval_success" in e])]
        if has_score:
            cols.append(fmt([e["eval_score"] for e in ev if "eval_score" in e]))
        if has_skills:
            cols.append(fmt([v for v in map(_with_skills, rs) if v is not None]))
        cols += [fmt([e.get("eval_success_by_type", {})[t] for e in ev if t in e.get("eval_success_by_type", {})])
                 for t in types]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def _run_average(run: dict) -> float | None:
    """Mean held-out success over the run's evaluations after step 0 (the whole curve, not its last point)."""
    vals = [m["eval_success"] for m in run["metrics"] if m.get("step", 0) > 0
            and isinstance(m.get("eval_success"), (int, float)) and not math.isnan(m["eval_success"])]
    return sum(vals) / len(vals) if vals else None


def paired_t(diffs: list[float]) -> float | None:
    """The paired t statistic mean / (std / √n) of per-seed differences (n − 1 degrees of freedom); None for
    fewer than two seeds or no spread."""
    m, sd = mean_std(diffs)
    return m / (sd / math.sqrt(len(diffs))) if sd else None


def paired_table(runs: list[dict], group: str, env: str, base: str = "grpo", *, variants_only: bool = False) -> str:
    """Success minus ``base``'s, paired by seed (same seed = same warm start and, for a shared warm start, the
    same training tasks per step), at the last evaluation (mean ± std over the paired seeds, each seed's
    difference, the paired t) and averaged over the evaluations after step 0. ``base`` comes from ``group``
    or, when the group has none, from the ``main`` group of the same experiment. ``variants_only`` keeps the
    rows that are ``base`` with an axis changed (``sdar__beta-20`` for ``sdar``)."""
    rows = _rows(runs, group, env)
    if variants_only:
        rows = {k: v for k, v in rows.items() if k == base or k.startswith(base + "__")}
    ref_rows = rows.get(base) or _rows(runs, "main", env).get(base)
    if not ref_rows or not set(rows) - {base}:
        return ""
    ref = {r["seed"]: r for r in ref_rows if "eval_success" in r["done"]["final_eval"]}
    lines = [f"| config | paired seeds | success − {base} | per seed | paired t | run average − {base} |",
             "|---|---|---|---|---|---|"]
    for name, rs in rows.items():
        if name == base:
            continue
        pairs = {r["seed"]: (r, ref[r["seed"]]) for r in rs
                 if r["seed"] in ref and "eval_success" in r["done"]["final_eval"]}
        if not pairs:
            continue
        diffs = {k: a["done"]["final_eval"]["eval_success"] - b["done"]["final_eval"]["eval_success"]
                 for k, (a, b) in pairs.items()}
        averages = [(_run_average(a), _run_average(b)) for a, b in pairs.values()]
        avg = [a - b for a, b in averages if a is not None and b is not None]
        t = paired_t(list(diffs.values()))
        per_seed = ", ".join(f"s{k}: {v:+.3f}" for k, v in sorted(diffs.items()))
        lines.append(f"| {name} | {len(diffs)} | {fmt(list(diffs.values()))} | {per_seed} | "
                     f"{'–' if t is None else f'{t:.2f}'} | {fmt(avg)} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def _eval_tasks(runs: list[dict], group: str, env: str) -> int | None:
    """The number of evaluation tasks of ``group`` on ``env`` when every run used the same."""
    sizes = {r["config"].get("eval_seeds") for rs in _rows(runs, group, env).values() for r in rs} - {None}
    return sizes.pop() if len(sizes) == 1 else None


def _series(runs: list[dict], key: str) -> tuple[list[int], list[float], list[float]] | None:
    """Steps present in every run's metrics for ``key``; mean and std (ddof 1, 0 for one run) there."""
    per_run = [{r_["step"]: r_[key] for r_ in r["metrics"] if isinstance(r_.get(key), (int, float))
                and not math.isnan(r_[key])} for r in runs]
    steps = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
    if not steps:
        return None
    means, stds = [], []
    for s in steps:
        m, sd = mean_std([p[s] for p in per_run])
        means.append(m)
        stds.append(sd or 0.0)
    return steps, means, stds


def plot_curves(runs: list[dict], group: str, env: str, key: str, out_png: str, *,
                ylabel: str | None = None) -> str | None:
    """Mean ± std band over seeds of ``key`` vs step for each config of ``group`` on ``env``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _rows(runs, group, env)
    curves = {name: _series(rs, key) for name, rs in rows.items()}
    curves = {k: v for k, v in curves.items() if v is not None}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, (steps, means, stds) in curves.items():
        line, = ax.plot(steps, means, marker="o" if key.startswith("eval_") else None, markersize=3, label=name)
        ax.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                        color=line.get_color(), alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel or key)
    ax.set_title(f"{group} / {env}: {key} (mean ± std over seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def gate_table(runs: list[dict], env: str) -> str:
    """Gate statistics over training (mean over all steps, then mean ± std over seeds) per gated config."""
    rows = defaultdict(list)
    for r in runs:
        if r["env"] == env and r["method"] in GATED_METHODS:
            rows[r["row"].split("__", 1)[1]].append(r)
    if not rows:
        return ""
    lines = ["| config | gate | seeds | " + " | ".join(GATE_KEYS) + " |", "|" + "---|" * (3 + len(GATE_KEYS))]
    for name, rs in sorted(rows.items()):
        cols = [name, "none" if rs[0]["method"] == "grpo_opsd" else rs[0]["gate"], str(len(rs))]
        for k in GATE_KEYS:
            per_seed = []
            for r in rs:
                vals = [m[k] for m in r["metrics"] if isinstance(m.get(k), (int, float)) and not math.isnan(m[k])]
                if vals:
                    per_seed.append(sum(vals) / len(vals))
            cols.append(fmt(per_seed))
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def wallclock_table(runs: list[dict], env: str) -> str:
    """Mean seconds per training step per config (over steps and seeds) and the ratio to grpo."""
    rows = defaultdict(list)
    for r in runs:
        if r["env"] == env:
            rows[r["row"].split("__", 1)[1]].append(r)
    if not rows:
        return ""

    def per_step(rs):
        return [sum(ts) / len(ts) for ts in ([m["step_time"] for m in r["metrics"] if "step_time" in m] for r in rs)
                if ts]

    base = per_step(rows["grpo"]) if "grpo" in rows else []
    base_mean = sum(base) / len(base) if base else None
    lines = ["| config | seeds | s / step | × grpo |", "|---|---|---|---|"]
    for name, rs in sorted(rows.items()):
        ps = per_step(rs)
        ratio = f"{(sum(ps) / len(ps)) / base_mean:.2f}" if ps and base_mean else ""
        lines.append(f"| {name} | {len(rs)} | {fmt(ps)} | {ratio} |")
    return "\n".join(lines)


def render(runs_dir: str, out_dir: str) -> str:
    """The generated markdown (PNGs written under ``out_dir/results``)."""
    data = collect(runs_dir)
    runs = data["runs"]
    img_dir = os.path.join(out_dir, "results")
    parts = [f"_Generated by `sdar report {runs_dir}`: {len(runs)} finished runs, "
             f"{len(data['unfinished'])} unfinished._"]
    if data["warm"]:
        parts.append("### Step 0: the shared warm start (student vs skill-prompted teacher, eval split)\n\n"
                     "| env | seeds | student success | teacher success |\n|---|---|---|---|\n" + "\n".join(
                         f"| {env} | {len(w['student'])} | {fmt(w['student'])} | {fmt(w['teacher'])} |"
                         for env, w in sorted(data["warm"].items())))
    groups = sorted({g for r in runs for g in r["groups"]}, key=lambda g: (g != "main", g))
    envs_ = sorted({r["env"] for r in runs})
    for group in groups:
        for env in envs_:
            table = final_table(runs, group, env)
            if not table:
                continue
            parts.append(f"### {group} — {env}: final held-out evaluation (mean ± std over seeds)\n\n{table}")
            n = _eval_tasks(runs, group, env)
            if n:
                parts.append(f"One evaluation plays the same {n} held-out tasks for every run; its binomial "
                             f"standard error is at most 0.5/√{n} = {0.5 / math.sqrt(n):.3f}.")
            # every row against grpo; an ablation row (method__axis-value) also against its method unchanged
            rows = _rows(runs, group, env)
            for base in ["grpo"] + sorted({name.split("__", 1)[0] for name in rows if "__" in name} - {"grpo"}):
                paired = paired_table(runs, group, env, base, variants_only=base != "grpo")
                if paired:
                    what = (" (paired t: n − 1 degrees of freedom; run average: over the evaluations after step 0):"
                            if base == "grpo" else ", the same method without the axis change:")
                    parts.append(f"Paired by seed against {base}{'' if base in rows else ' of grid main'}{what}"
                                 f"\n\n{paired}")
            for key, label in (("eval_success", "success"), ("entropy", "entropy")):
                png = plot_curves(runs, group, env, key, os.path.join(img_dir, f"{group}_{env}_{label}.png"))
                if png:
                    parts.append(f"![{group} {env} {label}](results/{os.path.basename(png)})")
    for env in envs_:
        gt = gate_table(runs, env)
        if gt:
            parts.append(f"### Gate statistics over training — {env}\n\n{gt}")
            rs = [r for r in runs if r["env"] == env and r["method"] in GATED_METHODS]
            for key in ("gate_pos_gap_mean", "gate_neg_gap_mean", "neg_gap_frac"):
                png = _gate_png(rs, env, key, img_dir)
                if png:
                    parts.append(f"![{env} {key}](results/{os.path.basename(png)})")
    for env in envs_:
        parts.append(f"### Wall clock per training step — {env}\n\n{wallclock_table(runs, env)}")
    if data["unfinished"]:
        parts.append("Unfinished cells: " + ", ".join(f"`{n}`" for n in data["unfinished"]))
    return "\n\n".join(parts)


def _gate_png(runs: list[dict], env: str, key: str, img_dir: str) -> str | None:
    tagged = [{**r, "groups": ["gates"]} for r in runs]
    return plot_curves(tagged, "gates", env, key, os.path.join(img_dir, f"gates_{env}_{key}.png"))


def write_report(runs_dir: str, out_dir: str = "docs") -> str:
    """Render and splice into ``out_dir/RESULTS.md`` between the markers; returns the file's path."""
    body = render(runs_dir, out_dir)
    path = os.path.join(out_dir, "RESULTS.md")
    text = open(path).read() if os.path.exists(path) else f"# Results\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text or text.index(BEGIN) > text.index(END):
        raise ValueError(f"out: {path} lacks the {BEGIN} ... {END} markers")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    os.makedirs(out_dir, exist_ok=True)
    with open(path, "w") as f:
        f.write(f"{head}{BEGIN}\n{body}\n{END}{tail}")
    return path


__all__ = ["collect", "final_table", "fmt", "gate_table", "mean_std", "paired_t", "paired_table", "plot_curves",
           "render", "wallclock_table", "write_report"]
