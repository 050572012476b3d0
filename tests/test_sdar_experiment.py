"""The evidence-study tooling: grid expansion, the shared warm start, skip/resume, the report.

Runs are faked by a stand-in for ``python -m sdar …`` that writes the files the real subcommands write,
so these tests take seconds; one real tiny grid (``experiments/quick.json``) is marked slow.
"""
import copy
import json
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from sdar import experiment as ex
from sdar import report as rp
from sdar.cli import build_parser
from sdar.config import Config, EvalConfig, config_from_args

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _grid(name):
    return ex.load_grid(os.path.join(ROOT, "experiments", f"{name}.json"))


def _tiny_grid(out_dir, **budget):
    return {"name": "t", "out_dir": str(out_dir), "seeds": [0, 1],
            "budget": {"steps": 3, "eval_every": 1, "eval_seeds": 4, **budget},
            "envs": {"household": {"max_turns": 3}, "shop": {"max_turns": 4}},
            "warm_start": {"init": {"episodes": 2}, "sft": {"episodes": 2}},
            "grids": [{"name": "main", "methods": ["grpo", "sdar", {"label": "sdar_ent", "method": "sdar",
                                                                     "gate": "entropy"}]},
                      {"name": "beta", "envs": ["household"], "methods": ["sdar"], "axes": {"beta": [1, 5]}}]}


# ----------------------------------------------------------------------------- expansion
def test_cpu_grid_counts_names_and_reuse():
    g = _grid("cpu_all_envs")
    cells = ex.expand(g)
    names = [c.name for c in cells]
    assert len(names) == len(set(names))
    n_seeds, n_envs, n_methods = len(g["seeds"]), len(g["envs"]), len(g["grids"][0]["methods"])
    # ablation values equal to the default (task_type, beta 5, distill sdar) are the main sdar cell
    new_ablation = (5 - 1) + (4 - 1) + (4 - 1)
    assert len(cells) == n_seeds * (n_envs * n_methods + new_ablation) == 111
    by_name = {c.name: c for c in cells}
    main_sdar = by_name["household__sdar__s0"]
    assert sorted(main_sdar.groups) == ["beta", "divergence", "main", "skill_strategy"]
    assert by_name["household__sdar__beta-0__s1"].overrides["beta"] == 0
    assert by_name["household__sdar__distill_loss-jsd__s2"].groups == ["divergence"]
    assert by_name["search_qa__sdar_soft_or__s0"].overrides["gate"] == "soft_or"
    assert by_name["search_qa__grpo__s0"].overrides["kl_coef"] == 0.001
    assert "household__sdar__beta-5__s0" not in by_name
    # one shared warm start per (env, seed)
    assert {c.warm_key for c in cells} == {f"{e}__s{s}" for e in g["envs"] for s in g["seeds"]}
    # every method of an (env, seed) gets the same model_dir
    dirs = {ex.cell_config(c, "/o", ex.warm_dir("/o", c) + "/sft").model_dir
            for c in cells if c.warm_key == "shop__s1"}
    assert dirs == {"/o/models/shop__s1/sft"}


def test_cpu_configs_share_cells():
    """cpu_household and ablations are subsets of cpu_all_envs with identical cell configs (one runs/cpu)."""
    full = {c.name: ex._resolve(c.overrides) for c in ex.expand(_grid("cpu_all_envs"))}
    for part in ("cpu_household", "ablations"):
        g = _grid(part)
        assert g["out_dir"] == _grid("cpu_all_envs")["out_dir"]
        for c in ex.expand(g):
            assert full[c.name] == ex._resolve(c.overrides)
    assert len(ex.expand(_grid("cpu_household"))) == 3 * (9 + 10)


NINE_METHODS = ("grpo", "sdar", "grpo_opsd", "sdar_entropy", "sdar_soft_or", "rlsd", "skill_grpo", "opsd", "skill_sd")


@pytest.mark.parametrize("name, env, methods, sft", [
    ("household_seeds", "household", ("grpo", "sdar", "grpo_opsd", "rlsd"), (600, 4)),
    ("household_seeds_b", "household", ("grpo", "sdar", "sdar_soft_or"), (600, 4)),
    ("search_qa_seeds", "search_qa", NINE_METHODS, (2000, 6)),
    ("shop_seeds", "shop", NINE_METHODS, (2000, 6)),
])
def test_seed_studies_are_the_cpu_budget_from_one_warm_start(name, env, methods, sft):
    """household_seeds, search_qa_seeds and shop_seeds train cells of cpu_all_envs (same resolved configs) from one
    shared SFT (search_qa's and shop's longer: 2000 demos x 6 epochs), in their own out_dirs (their warm starts
    differ from the per-seed ones of runs/cpu). shop_seeds' ablation grids are tested below."""
    g = _grid(name)
    full = {c.name: ex._resolve(c.overrides) for c in ex.expand(_grid("cpu_all_envs"))}
    cells = [c for c in ex.expand(g) if not c.axes]
    assert sorted(c.name for c in cells) == sorted(f"{env}__{m}__s{s}" for m in methods for s in (0, 1, 2))
    for c in cells:
        assert full[c.name] == ex._resolve(c.overrides)
    assert {c.warm_key for c in cells} == {f"{env}__s0"}
    assert (g["warm_start"]["sft"]["episodes"], g["warm_start"]["sft"]["epochs"]) == sft
    assert g["out_dir"] != _grid("cpu_all_envs")["out_dir"]


def test_shop_ablations_change_only_beta_or_the_skill_retrieval_of_the_sdar_cell():
    """shop_seeds' beta and retrieval grids: the main sdar cell of each seed with only β or skill_strategy changed
    (β 5 and task_type are that cell, so they are not trained twice; β 0 is grpo_opsd's objective and keyword is
    task_type on every shop goal, so each runs on seed 0 only, as a reproducibility check)."""
    cells = {c.name: c for c in ex.expand(_grid("shop_seeds"))}
    expected = {f"shop__sdar__beta-{b:g}__s{s}": {"beta": b} for b in (1.0, 20.0) for s in (0, 1, 2)}
    expected["shop__sdar__beta-0__s0"] = {"beta": 0.0}
    expected["shop__sdar__skill_strategy-keyword__s0"] = {"skill_strategy": "keyword"}
    expected |= {f"shop__sdar__skill_strategy-{k}__s{s}": {"skill_strategy": k}
                 for k in ("all", "random", "similarity") for s in (0, 1, 2)}
    assert sorted(n for n, c in cells.items() if c.axes) == sorted(expected)
    for name, extra in expected.items():
        twin = cells[f"shop__sdar__s{cells[name].seed}"]
        assert ex._resolve(cells[name].overrides) == {**ex._resolve(twin.overrides), **extra}
        assert cells[name].warm_key == twin.warm_key == "shop__s0"


def test_household_oracle_differs_from_household_seeds_only_in_the_teacher_context_and_length():
    """The oracle study: the household_seeds budget, but the teacher (and the SFT's privileged demos) read the
    instance hint, 60 steps evaluated every 10; its own out_dir (its warm start differs). The coef, beta and gate
    grids are sdar with only λ, β or the gate changed, the opsd, rlsd and skill grids sdar with only the method
    changed; the confirm grid is grpo and the soft_or gate again on fresh seeds."""
    g, seeds = _grid("household_oracle"), _grid("household_seeds")
    base = {c.name: ex._resolve(c.overrides) for c in ex.expand(seeds)}
    cells = ex.expand(g)
    # cell name -> (the household_seeds cell with the same budget, the fields the study changes on top of it)
    expected = {f"household__{m}__s{s}": (f"household__{m}__s{s}", {}) for m in ("grpo", "sdar") for s in (0, 1, 2)}
    expected |= {f"household__sdar__coef-{lam}__s{s}": (f"household__sdar__s{s}", {"coef": lam})
                 for lam in (0.05, 0.1) for s in (0, 1, 2)}
    expected |= {f"household__opsd__s{s}": (f"household__sdar__s{s}", {"method": "opsd"}) for s in (0, 1, 2)}
    expected |= {f"household__sdar__beta-20__s{s}": (f"household__sdar__s{s}", {"beta": 20.0}) for s in (0, 1, 2)}
    expected |= {f"household__{m}__s{s}": (f"household__sdar__s{s}", {"method": m})
                 for m in ("rlsd", "skill_grpo", "skill_sd") for s in (0, 1, 2)}
    expected |= {f"household__sdar__gate-{gate}__s{s}": (f"household__sdar__s{s}", {"gate": gate})
                 for gate in ("entropy", "soft_or") for s in (0, 1, 2)}
    # the confirm grid: grpo and the soft_or gate on fresh seeds 3-5
    expected |= {f"household__grpo__s{s}": ("household__grpo__s0", {}) for s in (3, 4, 5)}
    expected |= {f"household__sdar__gate-soft_or__s{s}": ("household__sdar__s0", {"gate": "soft_or"})
                 for s in (3, 4, 5)}
    assert sorted(c.name for c in cells) == sorted(expected)
    changed = {"skill_strategy": "oracle", "steps": 60, "eval_every": 10, "save_every": 10}
    for c in cells:
        twin, extra = expected[c.name]
        assert ex._resolve(c.overrides) == {**base[twin], **changed, **extra}
        assert c.name.endswith(f"__s{c.seed}")
    assert g["warm_start"]["sft"]["skill_strategy"] == "oracle" and g["out_dir"] != seeds["out_dir"]
    assert {c.warm_key for c in cells} == {"household__s0"}


def test_full_scale_config_matches_published_settings():
    cells = ex.expand(_grid("full_scale_qwen"))
    for c in cells:
        cfg = Config(**{**c.overrides, "run_dir": "r", "model_dir": "m"})
        assert (cfg.steps, cfg.group_size, cfg.clip_eps, cfg.engine) == (150, 8, 0.2, "vllm")
        assert cfg.beta == (c.axes["beta"] if "beta" in c.axes else 5.0)
        env = cfg.env
        assert cfg.max_turns == {"alfworld": 50, "webshop": 15, "search_qa": 4}[env]
        assert cfg.kl_coef == (0.001 if env == "search_qa" else 0.01)
        if cfg.method == "sdar" and cfg.coef is None:
            assert cfg.lam == 0.01


def test_select_and_bad_configs(tmp_path):
    g = _tiny_grid(tmp_path)
    cells = ex.expand(g)
    # 2 envs × 3 methods × 2 seeds + household beta-1 × 2 seeds (beta 5 is the main sdar cell)
    assert len(cells) == 2 * 3 * 2 + 2
    assert [c.name for c in ex.select(cells, "shop__sdar_ent*")] == ["shop__sdar_ent__s0", "shop__sdar_ent__s1"]
    bad = copy.deepcopy(g)
    bad["budget"]["not_a_field"] = 1
    with pytest.raises(ValueError, match="not_a_field"):
        ex.expand(bad)
    bad = copy.deepcopy(g)
    bad["budget"]["run_dir"] = "x"
    with pytest.raises(ValueError, match="run_dir"):
        ex.expand(bad)
    bad = copy.deepcopy(g)
    bad["grids"][1]["envs"] = ["nowhere"]
    with pytest.raises(ValueError, match="nowhere"):
        ex.expand(bad)
    bad = copy.deepcopy(g)
    bad["grids"][0]["methods"] = [{"label": "x", "method": "sdar", "gate": "sideways"}]
    with pytest.raises(ValueError, match="gate"):
        ex.expand(bad)
    with pytest.raises(ValueError, match="seeds"):
        ex.expand({**g, "seeds": []})
    with pytest.raises(ValueError, match="warm_start.sft"):
        ex.expand({**g, "warm_start": {"sft": {"epoch": 3}}})
    broken = tmp_path / "broken.json"
    broken.write_text('{"out_dir": ')
    with pytest.raises(ValueError, match=r"broken\.json: expected valid JSON"):
        ex.load_grid(str(broken))


# ----------------------------------------------------------------------------- skip / resume
class FakeSdar:
    """Stands in for ``python -m sdar ARGV``: writes what init-model / sft / train write."""

    def __init__(self, fail=(), fail_eval=False):
        self.calls, self.fail, self.fail_eval = [], set(fail), fail_eval

    def __call__(self, argv, log_path):
        self.calls.append(list(argv))
        cmd = argv[0]
        opt = {argv[i][2:]: argv[i + 1] for i in range(1, len(argv) - 1) if argv[i].startswith("--")}
        if cmd == "init-model":
            os.makedirs(opt["out-dir"], exist_ok=True)
            json.dump({}, open(os.path.join(opt["out-dir"], "sdar_model.json"), "w"))
        elif cmd == "sft":
            os.makedirs(opt["out-dir"], exist_ok=True)
            seed = int(opt["seed"])
            json.dump({"student": {"success": 0.1 * seed}, "teacher": {"success": 0.5 + 0.1 * seed}},
                      open(os.path.join(opt["out-dir"], "sft_report.json"), "w"))
            json.dump({}, open(os.path.join(opt["out-dir"], "config.json"), "w"))  # the weights' config
        elif cmd == "train":
            cfg = Config.load(opt["config"])
            assert cfg.resume
            path = os.path.join(cfg.run_dir, "metrics.jsonl")
            done_steps = len(open(path).read().splitlines()) if os.path.exists(path) else 0
            crash = os.path.basename(cfg.run_dir) in self.fail
            with open(path, "a") as f:
                for step in range(done_steps + 1, cfg.steps + 1):
                    if crash and step == 2:
                        return 1  # "killed" after step 1
                    row = {"step": step, "step_time": 1.0, "eval_success": 0.5}
                    if cfg.method == "skill_grpo":  # the run evaluates with skills itself
                        row["eval_skills_success"] = 0.6
                    f.write(json.dumps(row) + "\n")
            os.makedirs(os.path.join(cfg.run_dir, "final"), exist_ok=True)
            json.dump({}, open(os.path.join(cfg.run_dir, "final", "config.json"), "w"))
        elif cmd == "eval":
            if self.fail_eval:
                return 1
            assert "--skills" in argv and os.path.isdir(os.path.dirname(opt["model-dir"]))
            json.dump({"success": 0.7, "skills": True, "n": int(opt["seeds"])}, open(opt["out"], "w"))
        return 0


def test_warm_start_shared_skip_and_resume(tmp_path):
    g = _tiny_grid(tmp_path)
    fake = FakeSdar(fail={"household__sdar__s1"})
    summary = ex.run_experiment(g, runner=fake, log=lambda m: None)
    assert summary["failed"] == ["household__sdar__s1"] and len(summary["ran"]) == 13
    cmds = [c[0] for c in fake.calls]
    assert cmds.count("init-model") == cmds.count("sft") == 4  # 2 envs × 2 seeds, shared by all methods
    assert cmds.count("train") == 14
    for c in fake.calls:  # each train run starts from its (env, seed)'s SFT checkpoint
        if c[0] == "train":
            cfg = Config.load(c[2])
            cell = os.path.basename(cfg.run_dir)
            env, seed = cell.split("__")[0], int(cell.rsplit("__s", 1)[1])
            assert cfg.model_dir == os.path.join(str(tmp_path), "models", f"{env}__s{seed}", "sft")
            assert cfg.seed == seed
    failed_dir = tmp_path / "runs" / "household__sdar__s1"
    assert (failed_dir / "failed.json").exists() and not (failed_dir / "done.json").exists()
    # the second pass trains only the failed cell, which continues from where it stopped
    fake2 = FakeSdar()
    summary = ex.run_experiment(g, runner=fake2, log=lambda m: None)
    assert summary["ran"] == ["household__sdar__s1"] and len(summary["skipped"]) == 13
    assert [c[0] for c in fake2.calls] == ["train"]
    rows = [json.loads(x) for x in open(failed_dir / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert not (failed_dir / "failed.json").exists()
    done = json.load(open(failed_dir / "done.json"))
    assert done["final_eval"] == {"eval_success": 0.5} and done["steps"] == 3
    assert json.load(open(failed_dir / "eval.json"))["eval_success"] == 0.5
    cell = json.load(open(tmp_path / "runs" / "household__sdar__s0" / "cell.json"))
    assert sorted(cell["groups"]) == ["beta", "main"]
    # a third pass has nothing to do
    fake3 = FakeSdar()
    assert ex.run_experiment(g, runner=fake3, log=lambda m: None)["ran"] == [] and fake3.calls == []
    # a fresh clone keeps the committed sft_report.json but not the weights: SFT (not init) is rebuilt
    os.remove(tmp_path / "models" / "shop__s0" / "sft" / "config.json")
    os.remove(tmp_path / "runs" / "shop__grpo__s0" / "done.json")
    fake4 = FakeSdar()
    assert ex.run_experiment(g, runner=fake4, log=lambda m: None)["ran"] == ["shop__grpo__s0"]
    assert [c[0] for c in fake4.calls] == ["sft", "train"]


def test_a_rebuilt_warm_start_that_differs_from_its_committed_report_is_not_used(tmp_path):
    """A clone without the weights rebuilds the SFT; on another CPU floating-point differences grow into another
    model. The cells must not train from it (they would be paired with the committed runs): the rebuild is set
    aside, the committed report restored byte for byte, and every later attempt refuses without retraining."""
    g = _tiny_grid(tmp_path)
    cell = next(c for c in ex.expand(g) if c.env == "household")
    sft_dir = ex.ensure_warm_start(g, cell, str(tmp_path), runner=FakeSdar())
    report = os.path.join(sft_dir, "sft_report.json")
    committed = open(report).read()
    os.remove(os.path.join(sft_dir, "config.json"))  # a fresh clone: the committed report, no weights

    class OtherCpu(FakeSdar):
        def __call__(self, argv, log_path):
            rc = super().__call__(argv, log_path)
            if argv[0] == "sft":
                out = argv[argv.index("--out-dir") + 1]
                rep = json.load(open(os.path.join(out, "sft_report.json")))
                rep["student"]["success"] += 0.02
                json.dump(rep, open(os.path.join(out, "sft_report.json"), "w"))
            return rc

    other = OtherCpu()
    with pytest.raises(RuntimeError, match=r"does not reproduce the committed sft_report.json \(student.success"):
        ex.ensure_warm_start(g, cell, str(tmp_path), runner=other)
    assert [c[0] for c in other.calls] == ["sft"]
    assert open(report).read() == committed and not os.path.exists(os.path.join(sft_dir, "config.json"))
    assert os.path.exists(os.path.join(sft_dir + ".rebuilt", "config.json"))
    again = OtherCpu()
    with pytest.raises(RuntimeError, match="does not reproduce"):
        ex.ensure_warm_start(g, cell, str(tmp_path), runner=again)
    assert again.calls == []  # refused from the kept rebuild, no second SFT
    summary = ex.run_experiment(g, runner=OtherCpu(), log=lambda m: None, only=cell.name)
    assert summary["failed"] == [cell.name] and summary["ran"] == []
    # the same CPU reproduces the report: once the kept rebuild is removed, the rebuilt warm start is used
    shutil.rmtree(sft_dir + ".rebuilt")
    same = FakeSdar()
    assert ex.ensure_warm_start(g, cell, str(tmp_path), runner=same) == sft_dir
    assert [c[0] for c in same.calls] == ["sft"] and os.path.exists(os.path.join(sft_dir, "config.json"))


def test_parallel_cells_build_their_shared_warm_start_once(tmp_path):
    """Cells run as separate processes (``--only CELL`` each) start together: one builds the warm start they
    share, the others wait for it instead of training their own SFT into the same directory. Threads stand in
    for the processes: each takes the file lock through its own descriptor, as a process would."""
    g = _tiny_grid(tmp_path)
    g["warm_start"]["seed"] = 0
    cells = [c for c in ex.expand(g) if c.env == "household" and not c.axes]
    assert len({c.warm_key for c in cells}) == 1 and len(cells) >= 4

    class SlowSdar(FakeSdar):
        def __call__(self, argv, log_path):
            time.sleep(0.3)  # long enough for every caller to arrive while the first one is building
            return super().__call__(argv, log_path)

    fake = SlowSdar()
    with ThreadPoolExecutor(len(cells)) as pool:
        dirs = list(pool.map(lambda c: ex.ensure_warm_start(g, c, str(tmp_path), runner=fake), cells))
    assert len(set(dirs)) == 1 and os.path.exists(os.path.join(dirs[0], "config.json"))
    assert sorted(c[0] for c in fake.calls) == ["init-model", "sft"]


def _write_records(path, writer, n):
    for i in range(n):
        ex._write_json(path, {"writer": writer, "i": i, "pad": "x" * 2000})


def test_parallel_processes_rewrite_one_json_without_collisions(tmp_path):
    """Every `sdar experiment` process snapshots the grid into the same file on start: four processes rewriting
    one path 100 times each all succeed, and the file ends as one writer's complete last record."""
    path = str(tmp_path / "grid_t.json")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_records, args=(path, w, 100)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    last = json.load(open(path))
    assert last["i"] == 99 and last["writer"] in range(4) and len(last["pad"]) == 2000
    assert os.listdir(tmp_path) == ["grid_t.json"]  # no temporary file left behind


def test_warm_start_seed_shared_by_every_training_seed(tmp_path):
    g = _tiny_grid(tmp_path)
    g["warm_start"]["seed"] = 3
    g["grids"] = g["grids"][:1]
    fake = FakeSdar()
    summary = ex.run_experiment(g, runner=fake, log=lambda m: None)
    assert len(summary["ran"]) == 2 * 3 * 2 and not summary["failed"]
    warm = [c for c in fake.calls if c[0] in ("init-model", "sft")]
    assert len(warm) == 4  # init + SFT once per env, not per training seed
    assert all(c[c.index("--seed") + 1] == "3" for c in warm)
    trains = [Config.load(c[2]) for c in fake.calls if c[0] == "train"]
    for cfg in trains:  # every training seed of an env starts from that env's one checkpoint
        env = os.path.basename(cfg.run_dir).split("__")[0]
        assert cfg.model_dir == os.path.join(str(tmp_path), "models", f"{env}__s3", "sft")
    assert sorted({cfg.seed for cfg in trains}) == [0, 1]
    assert sorted(os.listdir(tmp_path / "models")) == ["household__s3", "shop__s3"]
    for bad in (-1, "0", True):
        with pytest.raises(ValueError, match="warm_start.seed"):
            ex.expand({**g, "warm_start": {**g["warm_start"], "seed": bad}})


def test_teacher_eval_after_training_resumed_and_backfilled(tmp_path):
    """teacher_eval: each finished run's final model is evaluated in the teacher's context with the run's
    evaluation settings (skill_grpo measures that itself); a failed evaluation leaves the cell unfinished and a
    rerun only evaluates; cells finished before the grid asked are evaluated on the next pass."""
    g = _tiny_grid(tmp_path)
    g["seeds"], g["envs"] = [0], {"household": {"max_turns": 3}}
    g["grids"] = [{"name": "main", "methods": ["grpo", "skill_grpo"]}]
    ex.run_experiment(g, runner=FakeSdar(), log=lambda m: None)  # no teacher_eval yet
    g["teacher_eval"] = True
    g["grids"][0]["methods"].append("sdar")
    msgs = []
    ex.run_experiment(g, dry_run=True, log=msgs.append)
    assert "evaluate household__grpo__s0" in msgs[0] and "done     household__skill_grpo__s0" in msgs[0]
    assert "3 cells (2 done, 1 to run)" in msgs[0] and "todo     household__sdar__s0" in msgs[0]
    fake = FakeSdar(fail_eval=True)
    out = ex.run_experiment(g, runner=fake, log=lambda m: None)
    assert out["failed"] == ["household__grpo__s0", "household__sdar__s0"] and out["ran"] == []
    assert [c[0] for c in fake.calls] == ["eval", "train", "eval"]  # the backfill, then the new cell
    assert not (tmp_path / "runs" / "household__sdar__s0" / "done.json").exists()
    fake = FakeSdar()
    out = ex.run_experiment(g, runner=fake, log=lambda m: None)
    assert out["ran"] == ["household__sdar__s0"] and not out["failed"]
    assert [c[0] for c in fake.calls] == ["eval", "train", "eval"]
    evals = [c for c in fake.calls if c[0] == "eval"]
    for call, cell in zip(evals, ("household__grpo__s0", "household__sdar__s0")):
        opt = {call[i]: call[i + 1] for i in range(1, len(call) - 1) if call[i].startswith("--")}
        rdir = os.path.join(str(tmp_path), "runs", cell)
        assert opt["--model-dir"] == os.path.join(rdir, "final") and opt["--out"].endswith(".tmp")
        assert (opt["--seeds"], opt["--max-turns"], opt["--split"], opt["--temperature"]) == ("4", "3", "eval_seen",
                                                                                               "0.4")
        assert json.load(open(os.path.join(rdir, "teacher_eval.json")))["success"] == 0.7
        parsed = config_from_args(build_parser().parse_args(call), EvalConfig)  # the real `sdar eval` accepts it
        assert parsed.skills and parsed.skill_strategy == "task_type" and parsed.seeds == 4
        assert not os.path.exists(os.path.join(rdir, "teacher_eval.json.tmp"))
    assert not (tmp_path / "runs" / "household__skill_grpo__s0" / "teacher_eval.json").exists()
    fake = FakeSdar()
    assert ex.run_experiment(g, runner=fake, log=lambda m: None)["ran"] == [] and fake.calls == []
    runs = rp.collect(str(tmp_path))["runs"]
    table = rp.final_table(runs, "main", "household")  # success, then with skills
    assert "| grpo | 1 | 0.500 | 0.700 |" in table and "| skill_grpo | 1 | 0.500 | 0.600 |" in table
    with pytest.raises(ValueError, match="teacher_eval"):
        ex.expand({**g, "teacher_eval": "yes"})
    with pytest.raises(RuntimeError, match="no final model"):  # a clone has no weights: say so, run nothing
        ex.teacher_eval(Config(), str(tmp_path / "runs" / "elsewhere"), runner=fake)
    assert fake.calls == []


def test_max_cells_only_and_config_mismatch(tmp_path):
    g = _tiny_grid(tmp_path)
    fake = FakeSdar(fail={"shop__grpo__s0"})
    out = ex.run_experiment(g, only="shop__grpo*", max_cells=1, runner=fake, log=lambda m: None)
    assert out["failed"] == ["shop__grpo__s0"] and out["ran"] == []
    assert [c[0] for c in fake.calls] == ["init-model", "sft", "train"]
    # the started cell may not be resumed under another budget
    g2 = _tiny_grid(tmp_path, steps=4)
    with pytest.raises(ValueError, match="different config"):
        ex.run_cell(g2, ex.select(ex.expand(g2), "shop__grpo__s0")[0], str(tmp_path), runner=FakeSdar())
    msgs = []
    ex.run_experiment(g, dry_run=True, runner=FakeSdar(), log=msgs.append)
    assert "failed   shop__grpo__s0" in msgs[0] and "14 cells (0 done, 14 to run)" in msgs[0]
    assert "todo     shop__sdar__s0" in msgs[0]
    os.makedirs(tmp_path / "runs" / "shop__sdar__s0")
    (tmp_path / "runs" / "shop__sdar__s0" / "metrics.jsonl").touch()  # begun, not finished
    msgs = []
    ex.run_experiment(g, dry_run=True, runner=FakeSdar(), log=msgs.append)
    assert "started  shop__sdar__s0" in msgs[0] and "14 cells (0 done, 14 to run)" in msgs[0]


def test_estimate_is_steps_times_step_seconds(tmp_path):
    g = _tiny_grid(tmp_path)
    g["estimate"] = {"step_seconds": {"grpo": 2.0, "sdar": 5.0}, "eval_seconds": 1.0, "sft_seconds": 10.0}
    cells = ex.expand(g)
    # 4 grpo cells × 3 steps × 2 s + 10 sdar-method cells × 3 × 5 s (sdar_ent falls back to its method);
    # 4 evals per cell (eval_every 1: steps 0..3); 4 warm starts
    assert ex.estimate_seconds(g, cells) == 4 * 3 * 2 + 10 * 3 * 5 + 14 * 4 * 1 + 4 * 10
    # a teacher-context evaluation per cell; skill_grpo evaluates twice (with and without skills) instead
    g["teacher_eval"] = True
    g["grids"].append({"name": "skill", "envs": ["household"], "methods": ["skill_grpo"]})
    cells = ex.expand(g)
    assert ex.estimate_seconds(g, cells) == (4 * 3 * 2 + 10 * 3 * 5 + 14 * 5 * 1 + 4 * 10
                                             + 2 * (3 * 30.0 + 8 * 1))  # skill_grpo: the default 30 s a step


# ----------------------------------------------------------------------------- the report
def _fake_run(root, name, *, groups, method, gate, env_name, evals, gates=None, step_times=(1.0,), types=None):
    rdir = os.path.join(root, "runs", name)
    os.makedirs(rdir)
    env, rest = name.split("__", 1)
    json.dump({"name": name, "row": name.rsplit("__s", 1)[0], "env": env, "label": rest.split("__")[0], "axes": {},
               "seed": int(name.rsplit("__s", 1)[1]), "groups": groups,
               "config": {"method": method, "gate": gate, "env": env_name, "eval_seeds": 200}},
              open(os.path.join(rdir, "cell.json"), "w"))
    rows = []
    for i, e in enumerate(evals):
        row = {"step": i * 10, "eval_success": e, "entropy": 1.0 - 0.1 * i,
               "step_time": step_times[min(i, len(step_times) - 1)]}
        if gates:
            row.update(gates[i])
        rows.append(row)
    with open(os.path.join(rdir, "metrics.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    final = {"eval_success": evals[-1], "eval_score": evals[-1] / 2}
    if types:
        final["eval_success_by_type"] = types
    json.dump({"name": name, "final_eval": final}, open(os.path.join(rdir, "done.json"), "w"))


def test_report_tables_by_hand(tmp_path):
    root = str(tmp_path / "exp")
    finals = {"sdar": [0.2, 0.4, 0.9], "grpo_opsd": [0.5, 0.5, 0.8]}
    for label, vals in finals.items():
        for seed, v in enumerate(vals):
            gates = [{"gate_pos_gap_mean": 0.6 + 0.1 * seed + 0.1 * i, "gate_neg_gap_mean": 0.3,
                      "neg_gap_frac": 0.25, "gap_mean": -0.1} for i in range(2)]
            _fake_run(root, f"household__{label}__s{seed}", groups=["main"], method=label,
                      gate="gap", env_name="household", evals=[0.1, v], gates=gates,
                      step_times=(2.0, 4.0) if label == "sdar" else (1.0, 2.0),
                      types={"pick": v, "heat": 1 - v})
    _fake_run(root, "household__grpo__s0", groups=["main"], method="grpo", gate="gap", env_name="household",
              evals=[0.1, 0.3], step_times=(1.0, 1.0))
    _fake_run(root, "shop__grpo__s0", groups=["main"], method="grpo", gate="gap", env_name="shop", evals=[0.2, 0.6])
    _fake_run(root, "household__opsd__s0", groups=["opsd"], method="opsd", gate="gap", env_name="household",
              evals=[0.1, 0.2], gates=2 * [{"gate_pos_gap_mean": 0.7, "gate_neg_gap_mean": 0.2, "neg_gap_frac": 0.5,
                                             "gap_mean": -0.3}])
    os.makedirs(os.path.join(root, "runs", "household__rlsd__s0"))  # started, not finished
    with open(os.path.join(root, "runs", "household__rlsd__s0", "cell.json"), "w") as f:
        json.dump({"name": "household__rlsd__s0", "groups": ["main"]}, f)
    for seed, (s, t) in enumerate([(0.1, 0.5), (0.3, 0.6), (0.2, 0.9)]):
        d = os.path.join(root, "models", f"household__s{seed}", "sft")
        os.makedirs(d)
        json.dump({"student": {"success": s}, "teacher": {"success": t}}, open(os.path.join(d, "sft_report.json"), "w"))

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "RESULTS.md").write_text(
        f"# Results\n\nhand-written intro\n\n{rp.BEGIN}\nold\n{rp.END}\n\nhand-written outro\n")
    path = rp.write_report(root, str(docs))
    text = open(path).read()

    def ms(vals):  # mean ± sample std by hand
        m = sum(vals) / len(vals)
        return f"{m:.3f} ± {math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)):.3f}"

    assert ms([0.2, 0.4, 0.9]) == "0.500 ± 0.361"
    assert "hand-written intro" in text and "hand-written outro" in text and "\nold\n" not in text
    assert "9 finished runs, 1 unfinished" in text
    # success, then success by task type (sorted: heat, pick)
    assert f"| sdar | 3 | {ms([0.2, 0.4, 0.9])} | {ms([0.8, 0.6, 0.1])} | {ms([0.2, 0.4, 0.9])} |" in text
    assert f"| grpo_opsd | 3 | {ms([0.5, 0.5, 0.8])} |" in text
    assert "| grpo | 1 | 0.300 |" in text  # one seed: no std
    assert "| grpo | 1 | 0.600 | 0.300 |" in text  # shop: success, score
    assert f"| household | 3 | {ms([0.1, 0.3, 0.2])} | {ms([0.5, 0.6, 0.9])} |" in text  # step 0
    # gate stats: per seed mean over steps (0.65, 0.75, 0.85), then over seeds
    assert f"| sdar | gap | 3 | {ms([0.65, 0.75, 0.85])} | 0.300 ± 0.000 | 0.250 ± 0.000 | -0.100 ± 0.000 |" in text
    assert "| grpo_opsd | none | 3 |" in text
    assert "| opsd | gap | 1 | 0.700 | 0.200 | 0.500 | -0.300 |" in text  # opsd has the configured gate
    # paired by seed against grpo (household grpo has seed 0 only: 0.3)
    assert "| sdar | 1 | -0.100 | s0: -0.100 |" in text and "| grpo_opsd | 1 | 0.200 | s0: +0.200 |" in text
    assert "0.5/√200 = 0.035" in text
    # wall clock: sdar 3 s/step vs grpo 1 s/step
    assert "| sdar | 3 | 3.000 ± 0.000 | 3.00 |" in text and "| grpo | 1 | 1.000 | 1.00 |" in text
    assert "`household__rlsd__s0`" in text
    for png in ("main_household_success.png", "main_household_entropy.png", "gates_household_gate_pos_gap_mean.png"):
        data = open(docs / "results" / png, "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
        assert f"(results/{png})" in text
    # idempotent: a second report replaces the generated part only
    rp.write_report(root, str(docs))
    assert open(path).read() == text


def test_report_paired_against_main_grpo_by_hand(tmp_path):
    """A grid without grpo pairs with grid main's grpo: last-step differences, paired t, run averages."""
    root = str(tmp_path / "exp")
    curves = {"grpo": {0: [0.2, 0.3, 0.4], 1: [0.2, 0.2, 0.3], 2: [0.2, 0.5, 0.2]},
              "sdar": {0: [0.2, 0.3, 0.5], 1: [0.2, 0.2, 0.2], 2: [0.2, 0.4, 0.4]},
              "sdar__gate-soft_or": {0: [0.2, 0.4, 0.5], 1: [0.2, 0.1, 0.4], 2: [0.2, 0.5, 0.4], 7: [0.2, 0.9, 0.9]},
              "sdar__gate-entropy": {0: [0.2, 0.3, 0.3]}}
    for row, seeds in curves.items():
        for seed, evals in seeds.items():
            _fake_run(root, f"household__{row}__s{seed}", groups=["main" if row in ("grpo", "sdar") else "gate"],
                      method=row.split("__")[0], gate="gap", env_name="household", evals=evals)
    text = rp.render(root, str(tmp_path / "docs"))
    # last step: +0.1, +0.1, +0.2 (seed 7 has no grpo partner); mean 2/15, std √(1/300), t = (2/15)/√(1/900) = 4
    assert ("| sdar__gate-soft_or | 3 | 0.133 ± 0.058 | s0: +0.100, s1: +0.100, s2: +0.200 | 4.00 | 0.067 ± 0.058 |"
            in text)  # run averages after step 0: 0.45 − 0.35, 0.25 − 0.25, 0.45 − 0.35
    assert "| sdar__gate-entropy | 1 | -0.100 | s0: -0.100 | – | -0.050 |" in text
    assert "Paired by seed against grpo of grid main" in text
    # the ablation rows against their own method (sdar of grid main): last step 0, +0.2, 0 (mean 1/15, std √(1/75),
    # t = (1/15)/√(1/225) = 1); run averages 0.45 − 0.40, 0.25 − 0.20, 0.45 − 0.40
    against_sdar = text.split("Paired by seed against sdar of grid main, the same method without the axis change")[1]
    assert ("| sdar__gate-soft_or | 3 | 0.067 ± 0.115 | s0: +0.000, s1: +0.200, s2: +0.000 | 1.00 | 0.050 ± 0.000 |"
            in against_sdar)
    assert "| sdar__gate-entropy | 1 | -0.200 | s0: -0.200 | – | -0.100 |" in against_sdar
    assert "| grpo |" not in against_sdar.split("![")[0]
    assert rp.paired_t([0.1, 0.1, 0.2]) == pytest.approx(4.0) and rp.paired_t([0.3]) is None
    assert rp.paired_t([0.1, 0.1]) is None  # no spread


def test_mean_std_and_markers(tmp_path):
    assert rp.mean_std([1.0, 3.0]) == (2.0, math.sqrt(2.0))
    assert rp.mean_std([0.4]) == (0.4, None)
    with pytest.raises(ValueError):
        rp.mean_std([])
    (tmp_path / "RESULTS.md").write_text("no markers here\n")
    (tmp_path / "runs").mkdir()
    with pytest.raises(ValueError, match="markers"):
        rp.write_report(str(tmp_path), str(tmp_path))


def test_cli_dry_run(capsys):
    from sdar.cli import main

    assert main(["experiment", os.path.join(ROOT, "experiments", "ablations.json"), "--dry-run",
                 "--out-dir", "/nonexistent/sdar-exp", "--only", "household__sdar__beta*"]) == 0
    out = capsys.readouterr().out
    assert "household__sdar__beta-20__s2" in out and "9 cells (0 done, 9 to run)" in out


# ----------------------------------------------------------------------------- a real tiny grid
@pytest.mark.slow
def test_quick_grid_end_to_end(tmp_path):
    """experiments/quick.json (the `sdar demo --quick` budget): init → SFT → grpo and sdar → report."""
    out = tmp_path / "quick"
    cmd = [sys.executable, "-m", "sdar", "experiment", os.path.join(ROOT, "experiments", "quick.json"),
           "--out-dir", str(out)]
    subprocess.run(cmd, check=True, cwd=ROOT, timeout=900)
    for cell in ("household__grpo__s0", "household__sdar__s0"):
        done = json.load(open(out / "runs" / cell / "done.json"))
        assert 0.0 <= done["final_eval"]["eval_success"] <= 1.0
        assert [json.loads(x)["step"] for x in open(out / "runs" / cell / "metrics.jsonl")] == [0, 1, 2]
    assert (out / "models" / "household__s0" / "sft" / "sft_report.json").exists()
    subprocess.run(cmd + ["--report", "--docs", str(tmp_path / "docs")], check=True, cwd=ROOT, timeout=300)
    text = (tmp_path / "docs" / "RESULTS.md").read_text()
    assert "| sdar | 1 |" in text and (tmp_path / "docs" / "results" / "main_household_success.png").exists()
