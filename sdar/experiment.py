"""``sdar experiment CONFIG.json``: run a grid of training runs resumably (the evidence study).

    sdar experiment experiments/cpu_household.json --dry-run          # the plan and its estimated cost
    sdar experiment experiments/cpu_household.json --max-cells 2      # run two unfinished cells, then stop
    sdar experiment experiments/cpu_household.json --only 'household__sdar*'
    sdar experiment experiments/cpu_household.json --report           # aggregate into docs/RESULTS.md
    sdar report experiments/results/cpu --out docs/                   # the same, from a runs directory

A grid config (JSON, see ``experiments/``) holds::

    name, out_dir, seeds: [0, 1, 2]
    budget:     Config fields shared by every cell (steps, batch_tasks, group_size, eval_every, ...)
    envs:       {label: {"env": name (default label), Config fields (preset, max_turns, kl_coef, ...)}}
    warm_start: {"init": InitConfig fields, "sft": SFTConfig fields}    (the embedded model), or
                {"model_dir": "/path/to/Qwen2.5-3B-Instruct", "eval_step0": true}  (local HF weights)
    grids:      [{"name": "main", "envs": [...], "methods": ["grpo", {"label": "sdar_entropy",
                  "method": "sdar", "gate": "entropy"}, ...], "axes": {"beta": [0, 1, 5, 20]}}, ...]
    estimate:   {"step_seconds": {"grpo": 15, "sdar": 30, ...}, "sft_seconds": 300, "eval_seconds": 60}
    teacher_eval: true   (optional) evaluate each final model in the teacher's context as well

**Cells.** Every grid expands to methods × envs × axis values × seeds. A cell is named
``{env}__{method label}[__{axis}-{value}...]__s{seed}``, where an axis value is named only when it
changes the resolved config — so ``sdar`` with β = 5 (the default) *is* the main ``sdar`` cell, and
the ablations reuse it instead of training it twice. Different configs writing into the same
``out_dir`` share cells by name; a cell whose stored config differs from the requested one is an
error (never mix budgets in one directory).

**Shared warm start.** One init + SFT per (env, seed) under ``out_dir/models/{env}__s{seed}``, reused
by every method of that env and seed, so all methods start from the same checkpoint (with
``warm_start.seed: K`` one warm start per env, built with seed K, is shared by every training seed too:
the seeds then measure the spread of RL alone, as with one pretrained model); its
``sft_report.json`` records the student's and the skill-prompted teacher's success at step 0. With
``warm_start.model_dir`` (full scale) there is no SFT; ``eval_step0`` evaluates the base model without
and with skills once per (env, seed) instead.

**Resumable.** Each cell trains in ``out_dir/runs/{cell}`` through ``python -m sdar train --config
cell_config.json`` with ``resume = true`` (a killed run continues from its last checkpoint). A cell is
finished when its ``done.json`` exists (written after training: the final evaluation, the wall
clock); finished cells are skipped. Each run leaves ``metrics.jsonl`` (one line per step), ``eval.json``
(the final held-out evaluation), ``cell.json`` (name, groups, axes, the resolved config) and
``train.log``. A failed cell is recorded in ``failed.json`` and the grid moves on.

**The teacher's context.** With ``teacher_eval: true`` each finished run's final model also plays the
evaluation tasks with the skills its teacher reads in its own prompt (``sdar eval --skills``, into
``teacher_eval.json``) — how much of the privileged context's lead training kept, since student and
teacher share the weights. Cells finished before the grid asked for it are evaluated on the next pass
(``--dry-run`` lists them as ``evaluate``); ``skill_grpo`` measures it during training and is skipped.

**No tuning on the eval split.** Training tasks come from each environment's ``train`` split (random
task seeds per step); every evaluation plays tasks 0..n-1 of ``eval_seen`` (or ``eval_unseen``), which
the environments generate from a different split key, and nothing in this module selects
hyper-parameters or checkpoints by an evaluation result: the reported number is the last step's.
"""
from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

from filelock import FileLock

from sdar.checkpoint import write_file_atomic
from sdar.config import Config, EvalConfig, InitConfig, SFTConfig
from sdar.report import load_json, read_jsonl

#: Config fields a cell may not set (the runner owns them).
_RUNNER_FIELDS = ("run_dir", "model_dir", "resume", "seed")
_TOP_KEYS = ("name", "out_dir", "seeds", "budget", "envs", "warm_start", "grids", "estimate", "description",
             "teacher_eval")


@dataclass
class Cell:
    """One training run of the grid."""

    name: str  # {env}__{label}[__{axis}-{value}...]__s{seed}; also the run directory's name
    env: str  # env label (a key of the config's "envs")
    label: str  # method label ("sdar_entropy")
    axes: dict  # the axis values that change the resolved config
    seed: int
    overrides: dict  # Config fields (budget ∪ env ∪ method ∪ axes), without run_dir/model_dir/resume/seed
    groups: list = field(default_factory=list)  # grids this cell belongs to
    warm_seed: int | None = None  # the warm start's seed when every training seed shares one (warm_start.seed)

    @property
    def row(self) -> str:
        """The name without the seed: the row of the results table."""
        return self.name.rsplit("__s", 1)[0]

    @property
    def warm_start_seed(self) -> int:
        """The seed its warm start is built with: its own, or the one shared by every seed."""
        return self.seed if self.warm_seed is None else self.warm_seed

    @property
    def warm_key(self) -> str:
        return f"{self.env}__s{self.warm_start_seed}"


# ----------------------------------------------------------------------------- the grid
def load_grid(path: str) -> dict:
    """Read and check a grid config JSON."""
    grid = load_json(path)
    check_grid(grid)
    return grid


def check_grid(grid: dict) -> None:
    if not isinstance(grid, dict):
        raise TypeError(f"grid: expected a JSON object, got {type(grid).__name__}")
    unknown = sorted(set(grid) - set(_TOP_KEYS))
    if unknown:
        raise ValueError(f"grid: unknown keys {unknown}; expected some of {list(_TOP_KEYS)}")
    for key in ("out_dir", "seeds", "envs", "grids"):
        if key not in grid:
            raise ValueError(f"grid: missing key {key!r}")
    seeds = grid["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ValueError(f"seeds: expected a non-empty list of ints >= 0, got {seeds!r}")
    if not isinstance(grid["envs"], dict) or not grid["envs"]:
        raise ValueError("envs: expected a non-empty object {label: {Config fields}}")
    if not isinstance(grid["grids"], list) or not grid["grids"]:
        raise ValueError("grids: expected a non-empty list of {name, envs, methods, axes}")
    if not isinstance(grid.get("teacher_eval", False), bool):
        raise ValueError(f"teacher_eval: expected true or false, got {grid['teacher_eval']!r}")
    ws = grid.get("warm_start", {})
    if not isinstance(ws, dict) or set(ws) - {"init", "sft", "model_dir", "eval_step0", "seed"}:
        raise ValueError("warm_start: expected {init, sft} or {model_dir, eval_step0}, and optionally seed")
    if "seed" in ws and not (isinstance(ws["seed"], int) and not isinstance(ws["seed"], bool) and ws["seed"] >= 0):
        raise ValueError(f"warm_start.seed: expected an int >= 0 (one warm start shared by every training "
                         f"seed), got {ws['seed']!r}")
    for key, cls in (("init", InitConfig), ("sft", SFTConfig)):
        bad = sorted(set(ws.get(key, {})) - {f.name for f in dataclasses.fields(cls)})
        if bad:
            raise ValueError(f"warm_start.{key}: unknown {cls.__name__} fields {bad}")
    for g in grid["grids"]:
        for key in g:
            if key not in ("name", "envs", "methods", "axes", "seeds"):
                raise ValueError(f"grids[{g.get('name')!r}]: unknown key {key!r}")
        for env in g.get("envs", list(grid["envs"])):
            if env not in grid["envs"]:
                raise ValueError(f"grids[{g.get('name')!r}].envs: {env!r} is not in envs {list(grid['envs'])}")
        if not g.get("methods"):
            raise ValueError(f"grids[{g.get('name')!r}].methods: expected a non-empty list")


def _method_entry(m) -> tuple[str, dict]:
    if isinstance(m, str):
        return m, {"method": m}
    if isinstance(m, dict) and "method" in m:
        m = dict(m)
        label = m.pop("label", m["method"])
        return label, m
    raise ValueError(f"methods: expected a method name or {{'label', 'method', ...Config fields}}, got {m!r}")


def _resolve(overrides: dict) -> dict:
    """The full Config dict these overrides give (validates field names and choices)."""
    known = {f.name for f in dataclasses.fields(Config)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"config: unknown Config fields {bad}")
    banned = sorted(set(overrides) & set(_RUNNER_FIELDS))
    if banned:
        raise ValueError(f"config: fields {banned} are set by the experiment runner, not the grid")
    return dataclasses.asdict(Config(**overrides))


def _fmt(value) -> str:
    text = str(value).replace("/", "_").replace(" ", "")
    return text[:-2] if text.endswith(".0") else text


def expand(grid: dict) -> list[Cell]:
    """All distinct cells of ``grid`` in a stable order (grid, env, method, axes, seed)."""
    check_grid(grid)
    budget = dict(grid.get("budget", {}))
    warm_seed = grid.get("warm_start", {}).get("seed")
    cells: dict[str, Cell] = {}
    for g in grid["grids"]:
        gname = g.get("name", "main")
        axes = g.get("axes", {}) or {}
        for ax, values in axes.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grids[{gname!r}].axes.{ax}: expected a non-empty list")
        for env in g.get("envs", list(grid["envs"])):
            env_over = dict(grid["envs"][env] or {})
            env_over.setdefault("env", env)
            for m in g["methods"]:
                label, m_over = _method_entry(m)
                base_over = {**budget, **env_over, **m_over}
                base = _resolve(base_over)
                for combo in itertools.product(*axes.values()):
                    over = {**base_over, **dict(zip(axes, combo))}
                    resolved = _resolve(over)
                    named = {k: v for k, v in zip(axes, combo) if resolved[k] != base[k]}
                    stem = "__".join([env, label, *(f"{k}-{_fmt(v)}" for k, v in named.items())])
                    for seed in g.get("seeds", grid["seeds"]):
                        name = f"{stem}__s{seed}"
                        if name in cells:
                            if _resolve(cells[name].overrides) != resolved:
                                raise ValueError(f"grid: two different configs share the cell name {name!r}")
                            if gname not in cells[name].groups:
                                cells[name].groups.append(gname)
                            continue
                        cells[name] = Cell(name, env, label, named, seed, over, [gname], warm_seed)
    return list(cells.values())


def select(cells: list[Cell], only: str | None) -> list[Cell]:
    """Cells whose name matches the glob ``only`` (or contains it as a substring)."""
    if not only:
        return cells
    return [c for c in cells if fnmatch.fnmatch(c.name, only) or only in c.name]


# ----------------------------------------------------------------------------- state on disk
def run_dir(out_dir: str, cell: Cell) -> str:
    return os.path.join(out_dir, "runs", cell.name)


def warm_dir(out_dir: str, cell: Cell) -> str:
    return os.path.join(out_dir, "models", cell.warm_key)


def is_done(out_dir: str, cell: Cell) -> bool:
    return os.path.exists(os.path.join(run_dir(out_dir, cell), "done.json"))


def _write_json(path: str, data) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_file_atomic(path, json.dumps(data, indent=2, sort_keys=True))


def _flags(data: dict) -> list[str]:
    """``{"max_turns": 10, "progress": False}`` → ``["--max-turns", "10", "--no-progress"]``."""
    out = []
    for k, v in data.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            out.append(flag if v else "--no-" + k.replace("_", "-"))
        elif isinstance(v, dict):
            out += [flag, json.dumps(v)]
        elif v is not None:
            out += [flag, str(v)]
    return out


def run_cli(argv: list[str], log_path: str) -> int:
    """``python -m sdar ARGV`` with its output appended to ``log_path``; returns the exit status."""
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with open(log_path, "a") as log:
        log.write(f"\n$ {sys.executable} -m sdar {' '.join(argv)}\n")
        log.flush()
        return subprocess.call([sys.executable, "-m", "sdar", *argv], stdout=log, stderr=subprocess.STDOUT, env=env)


# ----------------------------------------------------------------------------- running
def _subset(data: dict, cls) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def ensure_warm_start(grid: dict, cell: Cell, out_dir: str, *, runner=run_cli) -> str:
    """The model dir every method of (cell.env, cell.seed) starts from; builds it once (init + SFT, or the
    step-0 evaluations of local weights). Cells of one grid may run as parallel processes (``--only CELL``
    each): the first to get here builds the warm start they share, the others wait on the lock and find it."""
    wdir = warm_dir(out_dir, cell)
    os.makedirs(wdir, exist_ok=True)
    with FileLock(os.path.join(wdir, ".build.lock")):
        return _build_warm_start(grid.get("warm_start", {}), cell, wdir, runner)


def _build_warm_start(ws: dict, cell: Cell, wdir: str, runner) -> str:
    res = _resolve(cell.overrides)
    common = {"env": res["env"], "preset": res["preset"], "env_seed": res["env_seed"], "seed": cell.warm_start_seed}
    if "model_dir" in ws:  # local HF weights (full scale): no SFT
        if ws.get("eval_step0"):
            for skills in (False, True):
                out = os.path.join(wdir, "step0_teacher.json" if skills else "step0_student.json")
                if not os.path.exists(out):
                    ev = {**_subset(res, EvalConfig), **common, "model_dir": ws["model_dir"], "skills": skills,
                          "seeds": res["eval_seeds"], "split": res["eval_split"], "out": out,
                          "temperature": res["eval_temperature"]}
                    if runner(["eval", *_flags(ev)], os.path.join(wdir, "step0.log")) != 0:
                        raise RuntimeError(f"warm start {cell.warm_key}: step-0 evaluation failed (see step0.log)")
        return ws["model_dir"]
    init_dir, sft_dir = os.path.join(wdir, "init"), os.path.join(wdir, "sft")
    log = os.path.join(wdir, "warm_start.log")
    report = os.path.join(sft_dir, "sft_report.json")
    # ready = the report *and* the weights. A clone with a committed report but no weights rebuilds the SFT
    # (seeded), which must reproduce that report: on another CPU floating-point differences grow through
    # training into a different model, and the grid's committed runs would then be paired with runs from it.
    if not all(os.path.exists(os.path.join(sft_dir, f)) for f in ("sft_report.json", "config.json")):
        committed_text = None
        if os.path.exists(report):
            with open(report) as f:
                committed_text = f.read()
        committed = json.loads(committed_text) if committed_text is not None else None
        rebuilt_dir = sft_dir + ".rebuilt"
        if committed is not None and os.path.exists(os.path.join(rebuilt_dir, "sft_report.json")):
            # an earlier rebuild already differed: refuse without training another
            raise _rebuilt_sft_error(cell.warm_key, committed, load_json(os.path.join(rebuilt_dir, "sft_report.json")),
                                     rebuilt_dir)
        if not os.path.exists(os.path.join(init_dir, "sdar_model.json")):
            init = {**common, "max_turns": res["max_turns"], **ws.get("init", {}), "out_dir": init_dir}
            if runner(["init-model", *_flags(init)], log) != 0:
                raise RuntimeError(f"warm start {cell.warm_key}: init-model failed (see {log})")
        sft = {**common, "max_turns": res["max_turns"], "eval_max_turns": res["max_turns"],
               "eval_seeds": res["eval_seeds"], "eval_split": res["eval_split"],
               "eval_temperature": res["eval_temperature"], "max_new_tokens": res["max_new_tokens"],
               "threads": res["threads"], **ws.get("sft", {}), "model_dir": init_dir, "out_dir": sft_dir}
        if runner(["sft", *_flags(sft)], log) != 0:
            raise RuntimeError(f"warm start {cell.warm_key}: sft failed (see {log})")
        if committed is not None and _sft_differs(committed, rebuilt := load_json(report)):
            if os.path.exists(rebuilt_dir):
                shutil.rmtree(rebuilt_dir)
            os.replace(sft_dir, rebuilt_dir)  # keep the rebuilt model for inspection, out of the cells' way
            os.makedirs(sft_dir)
            write_file_atomic(report, committed_text)  # the committed report, byte for byte
            raise _rebuilt_sft_error(cell.warm_key, committed, rebuilt, rebuilt_dir)
    return sft_dir


_SFT_FINGERPRINT = (("final_loss",), ("student", "success"), ("teacher", "success"))


def _sft_differs(committed: dict, rebuilt: dict) -> list[str]:
    """The fingerprint fields (SFT loss, step-0 successes) in which a rebuilt SFT report differs from the committed
    one, as 'field committed -> rebuilt'; empty when the rebuild reproduced it (bit for bit on the same CPU)."""
    out = []
    for path in _SFT_FINGERPRINT:
        a, b = committed, rebuilt
        for k in path:
            a, b = (a or {}).get(k), (b or {}).get(k)
        if a != b:
            out.append(f"{'.'.join(path)} {a} -> {b}")
    return out


def _rebuilt_sft_error(key: str, committed: dict, rebuilt: dict, rebuilt_dir: str) -> RuntimeError:
    return RuntimeError(
        f"warm start {key}: the SFT rebuilt here does not reproduce the committed sft_report.json "
        f"({'; '.join(_sft_differs(committed, rebuilt))}), so runs from it would not be paired with the grid's "
        f"committed runs. The rebuilt model is kept in {rebuilt_dir} (delete it to rebuild again). Use the machine "
        f"that built it, or start a new grid (its own out_dir) and commit its warm start's weights")


def cell_config(cell: Cell, out_dir: str, model_dir: str) -> Config:
    return Config(**{**cell.overrides, "run_dir": run_dir(out_dir, cell), "model_dir": model_dir,
                     "seed": cell.seed, "resume": True, "progress": False})


def _cell_record(cell: Cell, cfg: Config) -> dict:
    return {"name": cell.name, "row": cell.row, "env": cell.env, "label": cell.label, "axes": cell.axes,
            "seed": cell.seed, "groups": cell.groups, "config": dataclasses.asdict(cfg)}


def teacher_eval(cfg: Config, rdir: str, *, runner=run_cli) -> None:
    """The run's final model evaluated on its held-out tasks in the teacher's context (the skills its teacher
    reads, in the policy's own prompt): how much of the privileged context's lead training kept. ``sdar eval``
    writes ``RDIR/teacher_eval.json`` once (atomically); a rerun reuses it."""
    path = os.path.join(rdir, "teacher_eval.json")
    if not os.path.exists(path):
        if not os.path.exists(os.path.join(rdir, "final", "config.json")):
            raise RuntimeError(f"{rdir}/final: no final model to evaluate (the weights are not committed; delete "
                               f"{rdir}/done.json to retrain the cell)")
        flags = {"model_dir": os.path.join(rdir, "final"), "env": cfg.env, "preset": cfg.preset,
                 "env_seed": cfg.env_seed, "split": cfg.eval_split, "seeds": cfg.eval_seeds,
                 "temperature": cfg.eval_temperature, "max_turns": cfg.max_turns,
                 "max_new_tokens": cfg.max_new_tokens, "skills": True, "skill_strategy": cfg.skill_strategy,
                 "skill_max_chars": cfg.skill_max_chars, "engine": cfg.engine, "device": cfg.device,
                 "dtype": cfg.dtype, "threads": cfg.threads, "out": path + ".tmp"}
        if runner(["eval", *_flags(flags)], os.path.join(rdir, "train.log")) != 0 or not os.path.exists(path + ".tmp"):
            raise RuntimeError(f"{rdir}: the teacher-context evaluation failed (see {rdir}/train.log)")
        os.replace(path + ".tmp", path)


def _wants_teacher_eval(grid: dict, final: dict) -> bool:
    """Whether the grid asks for it and the run has not measured it itself (skill_grpo evaluates with skills)."""
    return bool(grid.get("teacher_eval")) and "eval_skills_success" not in final


def _teacher_eval_pending(grid: dict, cell: Cell, out_dir: str) -> bool:
    """A finished cell the grid wants a teacher-context evaluation of, and has none (it finished before)."""
    rdir = run_dir(out_dir, cell)
    if not grid.get("teacher_eval") or os.path.exists(os.path.join(rdir, "teacher_eval.json")):
        return False
    return _wants_teacher_eval(grid, load_json(os.path.join(rdir, "done.json"))["final_eval"])


def run_cell(grid: dict, cell: Cell, out_dir: str, *, runner=run_cli) -> dict:
    """Train ``cell`` (resuming if it was interrupted) and write its done.json; returns done.json."""
    rdir = run_dir(out_dir, cell)
    done_path = os.path.join(rdir, "done.json")
    if os.path.exists(done_path):
        return load_json(done_path)
    model_dir = ensure_warm_start(grid, cell, out_dir, runner=runner)
    cfg = cell_config(cell, out_dir, model_dir)
    record = _cell_record(cell, cfg)
    cell_path = os.path.join(rdir, "cell.json")
    if os.path.exists(cell_path):
        old = load_json(cell_path)
        if old["config"] != record["config"]:
            diff = sorted(k for k in record["config"] if old["config"].get(k) != record["config"][k])
            raise ValueError(f"cell {cell.name}: {rdir} holds a run with a different config (fields {diff}); "
                             "use another out_dir")
        record["groups"] = sorted(set(old.get("groups", [])) | set(cell.groups))
    _write_json(cell_path, record)
    cfg.save(os.path.join(rdir, "cell_config.json"))
    t0 = time.time()
    rc = runner(["train", "--config", os.path.join(rdir, "cell_config.json")], os.path.join(rdir, "train.log"))
    rows = read_jsonl(os.path.join(rdir, "metrics.jsonl"))
    if rc != 0 or not rows or rows[-1].get("step") != cfg.steps:
        failure = {"name": cell.name, "returncode": rc, "last_step": rows[-1].get("step") if rows else 0,
                   "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write_json(os.path.join(rdir, "failed.json"), failure)
        raise RuntimeError(f"cell {cell.name}: training failed (rc {rc}; see {rdir}/train.log)")
    final = {k: v for k, v in rows[-1].items() if k.startswith("eval_")}
    _write_json(os.path.join(rdir, "eval.json"), {"step": cfg.steps, "split": cfg.eval_split, **final})
    if _wants_teacher_eval(grid, final):
        teacher_eval(cfg, rdir, runner=runner)
    step_times = [r["step_time"] for r in rows if "step_time" in r]
    done = {"name": cell.name, "steps": cfg.steps, "final_eval": final, "session_seconds": time.time() - t0,
            "mean_step_time": sum(step_times) / max(len(step_times), 1),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write_json(done_path, done)
    if os.path.exists(os.path.join(rdir, "failed.json")):
        os.remove(os.path.join(rdir, "failed.json"))
    return done


def estimate_seconds(grid: dict, cells: list[Cell]) -> float:
    """Cost of ``cells`` from the config's ``estimate`` block: steps × step seconds (per method) +
    one evaluation per ``eval_every`` steps (+ the final one; skill_grpo evaluates twice, with and without
    skills; ``teacher_eval`` adds one) + one SFT per new (env, seed)."""
    est = grid.get("estimate", {})
    per_step = est.get("step_seconds", {})
    total, warm = 0.0, set()
    for c in cells:
        res = _resolve(c.overrides)
        sec = per_step.get(c.label, per_step.get(res["method"], per_step.get("default", 30.0)))
        evals = (res["steps"] // res["eval_every"] + 1) if res["eval_every"] > 0 else 1
        if res["method"] == "skill_grpo":
            evals *= 2
        elif grid.get("teacher_eval"):
            evals += 1
        total += res["steps"] * sec + evals * est.get("eval_seconds", 60.0)
        warm.add(c.warm_key)
    return total + len(warm) * est.get("sft_seconds", 300.0)


def _cell_state(grid: dict, cell: Cell, out_dir: str) -> str:
    """done | evaluate (done, teacher-context evaluation pending) | failed | started | todo."""
    if is_done(out_dir, cell):
        return "evaluate" if _teacher_eval_pending(grid, cell, out_dir) else "done"
    rdir = run_dir(out_dir, cell)
    if os.path.exists(os.path.join(rdir, "failed.json")):
        return "failed"
    return "started" if os.path.exists(os.path.join(rdir, "metrics.jsonl")) else "todo"


def plan(grid: dict, cells: list[Cell], out_dir: str) -> str:
    states = [_cell_state(grid, c, out_dir) for c in cells]
    todo = [c for c, state in zip(cells, states) if state not in ("done", "evaluate")]
    lines = [f"{len(cells)} cells ({len(cells) - len(todo)} done, {len(todo)} to run) in {out_dir}"]
    lines += [f"  {state:8s} {c.name}  [{', '.join(c.groups)}]" for c, state in zip(cells, states)]
    sec = estimate_seconds(grid, todo)
    lines.append(f"estimated cost of the {len(todo)} unfinished cells: {sec / 3600:.1f} h "
                 f"({sec / 86400:.2f} days) at the config's 'estimate' timings")
    if "evaluate" in states:
        lines.append("evaluate: a finished cell whose teacher-context evaluation (teacher_eval) runs on the next pass")
    return "\n".join(lines)


def run_experiment(grid: dict, *, only: str | None = None, dry_run: bool = False, max_cells: int | None = None,
                   runner=run_cli, log=None) -> dict:
    """Run the unfinished cells of ``grid`` (matching ``only``, at most ``max_cells``); returns a summary."""
    log = log or (lambda msg: print(msg, flush=True))
    out_dir = grid["out_dir"]
    cells = select(expand(grid), only)
    if dry_run:
        log(plan(grid, cells, out_dir))
        return {"cells": len(cells), "ran": [], "failed": [], "skipped": [c.name for c in cells if is_done(out_dir, c)]}
    os.makedirs(out_dir, exist_ok=True)
    _write_json(os.path.join(out_dir, f"grid_{grid.get('name', 'grid')}.json"), grid)
    ran, failed, skipped = [], [], []
    for c in cells:
        if is_done(out_dir, c):
            try:
                if _teacher_eval_pending(grid, c, out_dir):
                    log(f"[experiment] {c.name}: the teacher-context evaluation of its final model")
                    rdir = run_dir(out_dir, c)
                    teacher_eval(Config.load(os.path.join(rdir, "cell_config.json")), rdir, runner=runner)
                skipped.append(c.name)
            except RuntimeError as e:
                log(f"[experiment] FAILED {e}")
                failed.append(c.name)
            continue
        if max_cells is not None and len(ran) + len(failed) >= max_cells:
            break
        log(f"[experiment] {c.name}")
        try:
            run_cell(grid, c, out_dir, runner=runner)
            ran.append(c.name)
        except RuntimeError as e:
            log(f"[experiment] FAILED {e}")
            failed.append(c.name)
    return {"cells": len(cells), "ran": ran, "failed": failed, "skipped": skipped}


# ----------------------------------------------------------------------------- the command line
def add_parsers(sub) -> None:
    """The ``experiment`` and ``report`` subcommands (called by :func:`sdar.cli.build_parser`)."""
    p = sub.add_parser("experiment", help="run a grid of runs resumably (the evidence study)")
    p.add_argument("config", help="grid config JSON (see experiments/)")
    p.add_argument("--only", default=None, help="run only cells whose name matches this glob / substring")
    p.add_argument("--dry-run", action="store_true", help="print the cells, their state and the estimated cost")
    p.add_argument("--max-cells", type=int, default=None, help="stop after this many cells (run in parts)")
    p.add_argument("--out-dir", default=None, help="override the config's out_dir")
    p.add_argument("--model-dir", default=None, help="override warm_start.model_dir (full-scale configs)")
    p.add_argument("--report", action="store_true", help="aggregate the runs into --docs/RESULTS.md instead")
    p.add_argument("--docs", default="docs", help="where RESULTS.md and results/*.png go (with --report)")
    p = sub.add_parser("report", help="aggregate a runs directory into docs/RESULTS.md (table, curves, gates)")
    p.add_argument("runs_dir", help="an experiment out_dir (holding runs/ and models/)")
    p.add_argument("--out", default="docs", help="directory of RESULTS.md; PNGs go to OUT/results/")


def main(args: argparse.Namespace) -> int:
    from sdar.report import write_report

    if args.command == "report":
        print(write_report(args.runs_dir, args.out))
        return 0
    grid = load_grid(args.config)
    if args.out_dir:
        grid["out_dir"] = args.out_dir
    if args.model_dir:
        grid.setdefault("warm_start", {})
        grid["warm_start"] = {k: v for k, v in grid["warm_start"].items() if k not in ("init", "sft")}
        grid["warm_start"]["model_dir"] = args.model_dir
    if args.report:
        print(write_report(grid["out_dir"], args.docs))
        return 0
    if args.max_cells is not None and args.max_cells < 1:
        raise ValueError(f"--max-cells: expected >= 1, got {args.max_cells}")
    summary = run_experiment(grid, only=args.only, dry_run=args.dry_run, max_cells=args.max_cells)
    print(json.dumps({k: v if isinstance(v, int) else len(v) for k, v in summary.items()}))
    return 1 if summary["failed"] else 0


__all__ = ["Cell", "add_parsers", "check_grid", "ensure_warm_start", "estimate_seconds", "expand", "is_done",
           "load_grid", "main", "plan", "run_cell", "run_experiment", "select"]
