"""Config dataclasses: defaults, JSON round trip, command-line parsing and --help of every subcommand."""
import dataclasses
import json

import pytest

from sdar.cli import build_parser, main
from sdar.config import Config, EvalConfig, InitConfig, SFTConfig


def test_round_trip(tmp_path):
    cfg = Config(method="rlsd", coef=0.3, norm_by_std=False, agg="seq-mean-token-sum-norm", extra={"note": "x"})
    path = tmp_path / "config.json"
    cfg.save(str(path))
    back = Config.load(str(path))
    assert back == cfg
    assert json.loads(path.read_text())["coef"] == 0.3
    assert back.lam == 0.3 and Config(method="sdar").lam == 0.01 and Config(method="grpo").lam == 0.0


def test_bad_values_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="method"):
        Config(method="ppo")
    with pytest.raises(ValueError, match="group_size"):
        Config(group_size=0)
    with pytest.raises(ValueError, match="unknown fields"):
        Config.from_dict({"nope": 1})
    for name in ("eval_every", "eval_seeds", "save_every", "keep_checkpoints"):
        with pytest.raises(ValueError, match=f"{name}: expected >= 0, got -1"):
            Config(**{name: -1})
    for beta in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="beta: expected a finite gate sharpness >= 0"):
            Config(beta=beta)
    assert Config(beta=0.0).beta == 0.0


def test_command_line_overrides():
    parser = build_parser()
    args = parser.parse_args(["train", "--method", "grpo", "--lr", "1e-4", "--no-norm-by-std", "--coef", "none",
                              "--steps", "7", "--resume"])
    from sdar.config import config_from_args

    cfg = config_from_args(args, Config)
    assert (cfg.method, cfg.lr, cfg.norm_by_std, cfg.coef, cfg.steps, cfg.resume) == ("grpo", 1e-4, False, None, 7, True)
    assert cfg.group_size == Config().group_size  # untouched fields keep their defaults
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--method", "ppo"])


@pytest.mark.parametrize("command,cls", [("train", Config), ("sft", SFTConfig), ("eval", EvalConfig),
                                         ("init-model", InitConfig)])
def test_help_lists_every_option(command, cls, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(cls):
        assert "--" + f.name.replace("_", "-") in out, f.name


def test_top_level_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for sub in ("init-model", "sft", "train", "eval", "plot", "demo"):
        assert sub in out
