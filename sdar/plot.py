"""``sdar plot RUN_DIR [RUN_DIR ...]``: PNG curves of runs' ``metrics.jsonl`` (matplotlib, Agg backend).

One run: every logged metric in its own panel. Several runs: a comparison — held-out eval success (± one
binomial standard error) and the training success (moving average) of each run on shared axes."""
from __future__ import annotations

import json
import math
import os

PANELS = [("success", "eval_success"), ("reward",), ("gate_mean", "gate_frac_ge_half"), ("gap_mean",),
          ("entropy",), ("kl",), ("clip_frac",), ("engine_mismatch",), ("step_time", "rollout_time", "update_time"),
          ("tokens_per_s",)]


def read_metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        raise ValueError(f"run_dir: no metrics.jsonl in {run_dir!r}")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_run(run_dir: str, out: str | None = None) -> str:
    """Write ``RUN_DIR/curves.png`` (or ``out``); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    panels = [p for p in PANELS if any(k in r for r in rows for k in p)]
    cols = 3
    n_rows = max(math.ceil(len(panels) / cols), 1)
    fig, axes = plt.subplots(n_rows, cols, figsize=(4.2 * cols, 3 * n_rows), squeeze=False)
    for ax, keys in zip(axes.flat, panels):
        for k in keys:
            pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float)) and not math.isnan(r[k])]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if k.startswith("eval_") else None, markersize=3, label=k)
        ax.set_xlabel("step")
        ax.set_title(", ".join(keys), fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(os.path.basename(os.path.abspath(run_dir)))
    fig.tight_layout()
    out = out or os.path.join(run_dir, "curves.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_compare(run_dirs: list[str], out: str, window: int = 10) -> str:
    """Eval success (± s.e.) and moving-average training success of several runs, side by side; returns ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_eval, ax_train) = plt.subplots(1, 2, figsize=(10, 3.6))
    for run_dir in run_dirs:
        rows = read_metrics(run_dir)
        label = os.path.basename(os.path.abspath(run_dir))
        ev = [(r["step"], r["eval_success"], r.get("eval_n", sum((r.get("eval_n_by_type") or {}).values())))
              for r in rows if isinstance(r.get("eval_success"), (int, float))]
        if ev:
            xs, ys, ns = zip(*ev)
            errs = [math.sqrt(max(y * (1 - y), 0.0) / n) if n else 0.0 for y, n in zip(ys, ns)]
            ax_eval.errorbar(xs, ys, yerr=errs, marker="o", markersize=4, capsize=3, label=label)
        tr = [(r["step"], r["success"]) for r in rows if isinstance(r.get("success"), (int, float))]
        if tr:
            xs, ys = zip(*tr)
            avg = [sum(ys[max(0, i - window + 1): i + 1]) / len(ys[max(0, i - window + 1): i + 1])
                   for i in range(len(ys))]
            ax_train.plot(xs, avg, label=label)
    ax_eval.set_title("held-out eval success (± s.e.)", fontsize=10)
    ax_train.set_title(f"training success (T = rollout temperature), mean of {window} steps", fontsize=10)
    for ax in (ax_eval, ax_train):
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


__all__ = ["plot_compare", "plot_run", "read_metrics"]
