"""``sdar plot RUN_DIR``: PNG curves of a run's ``metrics.jsonl`` (matplotlib, Agg backend)."""
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


__all__ = ["plot_run", "read_metrics"]
