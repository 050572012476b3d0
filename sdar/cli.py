"""The ``sdar`` command (also ``python -m sdar``).

    sdar init-model OUT_DIR        build the embedded Qwen3-architecture model + environment tokenizer
    sdar sft                       warm-start it on expert trajectories (reports student vs teacher)
    sdar train                     GRPO / SDAR / baselines (``--method``), resumable (``--resume``)
    sdar eval                      success on a held-out split, JSON
    sdar plot RUN_DIR [RUN_DIR ...] PNG curves of a run (several: eval and training success compared)
    sdar experiment CONFIG.json    a resumable grid of runs (the evidence study; sdar.experiment)
    sdar report RUNS_DIR           aggregate a grid into docs/RESULTS.md (sdar.report)
    sdar demo                      the README main job: init → SFT → SDAR on household → eval before/after

Every option of every subcommand is generated from the fields of its dataclass in
:mod:`sdar.config`, so ``sdar SUBCOMMAND --help`` always lists all of them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from sdar.config import Config, EvalConfig, InitConfig, SFTConfig, add_dataclass_args, config_from_args


def _setup_env() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdar", description="Lean GRPO + SDAR training for multi-turn LLM agents.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("init-model", help="build the embedded model and tokenizer")
    p.add_argument("out_dir_pos", nargs="?", metavar="OUT_DIR", help="output directory (same as --out-dir)")
    add_dataclass_args(p, InitConfig)
    add_dataclass_args(sub.add_parser("sft", help="supervised warm-start on expert trajectories"), SFTConfig)
    p = sub.add_parser("train", help="GRPO / SDAR training (the loop)")
    p.add_argument("--config", default=None, help="a config.json to start from (command-line options override it)")
    add_dataclass_args(p, Config)
    add_dataclass_args(sub.add_parser("eval", help="evaluate a model on a held-out split"), EvalConfig)
    p = sub.add_parser("plot", help="PNG curves of a run, or a comparison of several runs")
    p.add_argument("run_dir", nargs="+", help="run directory holding metrics.jsonl (several: a comparison)")
    p.add_argument("--out", default=None, help="PNG path (default RUN_DIR/curves.png; required for several runs)")
    p = sub.add_parser("demo", help="init model → SFT → SDAR training on household → eval before/after")
    p.add_argument("--out-dir", default="runs/demo", help="where models, the run and the report go")
    p.add_argument("--method", default="sdar", help="training method (default sdar)")
    p.add_argument("--steps", type=int, default=None, help="RL steps (default: the demo's CPU budget)")
    p.add_argument("--eval-seeds", type=int, default=None, help="held-out tasks for before/after (default 200)")
    p.add_argument("--quick", action="store_true", help="a seconds-long version for tests (numbers meaningless)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch default; 1 is faster on a busy CPU)")
    from sdar.experiment import add_parsers as add_experiment_parsers

    add_experiment_parsers(sub)  # `sdar experiment CONFIG` and `sdar report RUNS_DIR`
    return parser


def main(argv: list[str] | None = None) -> int:
    _setup_env()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "init-model":
        cfg = config_from_args(args, InitConfig)
        if args.out_dir_pos:
            cfg.out_dir = args.out_dir_pos
        from sdar.models import ModelSize, init_model

        size = ModelSize(hidden_size=cfg.hidden_size, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                         num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                         intermediate_size=cfg.intermediate_size, vocab_size=cfg.vocab_size)
        init_model(cfg.out_dir, env_name=cfg.env, preset=cfg.preset, env_seed=cfg.env_seed, episodes=cfg.episodes,
                   max_turns=cfg.max_turns, size=size, seed=cfg.seed, skill_max_chars=cfg.skill_max_chars)
        print(open(os.path.join(cfg.out_dir, "sdar_model.json")).read())
    elif args.command == "sft":
        from sdar.sft import sft

        print(json.dumps(sft(config_from_args(args, SFTConfig)), indent=2))
    elif args.command == "train":
        from sdar.train import train

        base = Config.load(args.config) if args.config else None
        cfg = config_from_args(args, Config, base=base)
        if cfg.resume and args.config is None and os.path.exists(os.path.join(cfg.run_dir, "config.json")):
            saved = Config.load(os.path.join(cfg.run_dir, "config.json"))  # a resume keeps the run's config
            cfg = config_from_args(args, Config, base=saved)
            cfg.resume = True
        print(json.dumps(train(cfg), indent=2))
        from sdar.distributed import exit_distributed_process

        exit_distributed_process()  # torchrun: skip interpreter finalization (see its docstring)
    elif args.command == "eval":
        from sdar.evaluate import run_eval

        print(json.dumps(run_eval(config_from_args(args, EvalConfig)), indent=2))
    elif args.command == "plot":
        from sdar.plot import plot_compare, plot_run

        if len(args.run_dir) == 1:
            print(plot_run(args.run_dir[0], args.out))
        elif not args.out:
            parser.error("plot: --out is required when comparing several runs")
        else:
            print(plot_compare(args.run_dir, args.out))
    elif args.command in ("experiment", "report"):
        from sdar.experiment import main as experiment_main

        return experiment_main(args)
    elif args.command == "demo":
        demo(args.out_dir, method=args.method, steps=args.steps, eval_seeds=args.eval_seeds, quick=args.quick,
             seed=args.seed, threads=args.threads)
    return 0


# ----------------------------------------------------------------------------- the README main job
#: The demo's budget on a 2-core CPU (measured; see the README).
DEMO = dict(init_episodes=150, sft_episodes=600, sft_epochs=4, steps=30, batch_tasks=4, group_size=8,
            max_turns=10, eval_seeds=200)
QUICK = dict(init_episodes=8, sft_episodes=8, sft_epochs=1, steps=2, batch_tasks=2, group_size=2, max_turns=3,
             eval_seeds=4)


def demo(out_dir: str, *, method: str = "sdar", steps: int | None = None, eval_seeds: int | None = None,
         quick: bool = False, seed: int = 0, threads: int = 0) -> dict:
    """init-model → sft → train (household small) → eval before/after; prints and returns the report."""
    from sdar.evaluate import evaluate_model
    from sdar.models import init_model, load_model
    from sdar.sft import sft
    from sdar.train import train

    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    p = dict(QUICK if quick else DEMO)
    if steps is not None:
        p["steps"] = steps
    if eval_seeds is not None:
        p["eval_seeds"] = eval_seeds
    t0 = time.time()
    init_dir, sft_dir, run_dir = (os.path.join(out_dir, d) for d in ("models/init", "models/sft", "run"))
    timings = {}
    print(f"[demo] 1/4 init-model -> {init_dir}", flush=True)
    init_model(init_dir, episodes=p["init_episodes"], max_turns=p["max_turns"], seed=seed)
    timings["init"] = time.time() - t0
    print(f"[demo] 2/4 sft ({p['sft_episodes']} expert episodes) -> {sft_dir}", flush=True)
    scfg = SFTConfig(model_dir=init_dir, out_dir=sft_dir, episodes=p["sft_episodes"], epochs=p["sft_epochs"],
                     max_turns=p["max_turns"], eval_max_turns=p["max_turns"], eval_seeds=p["eval_seeds"], seed=seed)
    sft_report = sft(scfg)
    timings["sft"] = time.time() - t0 - timings["init"]
    print(f"[demo]     SFT student success {sft_report['student']['success']:.3f}, "
          f"teacher (skills in prompt) {sft_report['teacher']['success']:.3f}", flush=True)
    print(f"[demo] 3/4 train --method {method} for {p['steps']} steps -> {run_dir}", flush=True)
    cfg = Config(run_dir=run_dir, model_dir=sft_dir, method=method, steps=p["steps"], batch_tasks=p["batch_tasks"],
                 group_size=p["group_size"], max_turns=p["max_turns"], eval_every=0, eval_seeds=0, seed=seed,
                 save_every=max(p["steps"] // 4, 1), progress=not quick)
    t1 = time.time()
    train(cfg)
    timings["train"] = time.time() - t1
    print("[demo] 4/4 eval after", flush=True)
    model, tok = load_model(os.path.join(run_dir, "final"), train=False)
    after = evaluate_model(model, tok, env_name=cfg.env, preset=cfg.preset, env_seed=cfg.env_seed,
                           split=cfg.eval_split, n_seeds=p["eval_seeds"], max_turns=p["max_turns"],
                           temperature=cfg.eval_temperature, max_new_tokens=cfg.max_new_tokens)
    before = sft_report["student"]
    timings["total"] = time.time() - t0
    report = {"method": method, "params": p, "before": before, "after": after, "teacher_step0": sft_report["teacher"],
              "seconds": timings}
    with open(os.path.join(out_dir, "demo_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    se = lambda q, n: (q * (1 - q) / max(n, 1)) ** 0.5  # noqa: E731
    print(f"[demo] household/small eval_seen, {after['n']} tasks, T={cfg.eval_temperature}:")
    print(f"[demo]   SFT checkpoint      success {before['success']:.3f} ± {se(before['success'], before['n']):.3f}")
    print(f"[demo]   after {p['steps']} {method} steps success {after['success']:.3f} ± "
          f"{se(after['success'], after['n']):.3f}  (teacher at step 0: {sft_report['teacher']['success']:.3f})")
    print(f"[demo]   wall time {timings['total']:.0f} s (init {timings['init']:.0f}, SFT+eval {timings['sft']:.0f}, "
          f"RL {timings['train']:.0f}); report: {os.path.join(out_dir, 'demo_report.json')}", flush=True)
    return report


if __name__ == "__main__":
    sys.exit(main())
