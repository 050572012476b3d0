"""Checkpoints are atomic: a failure (or kill) while writing leaves the previous checkpoint intact and
loadable, and the metrics file is cut back to the checkpoint on resume."""
import os
import random

import numpy as np
import pytest
import torch

from sdar import checkpoint as ck


def _model():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    m(torch.randn(5, 4)).sum().backward()
    opt.step()
    return m, opt


def test_save_load_round_trip_restores_everything(tmp_path):
    m, opt = _model()
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    path = ck.save_checkpoint(str(tmp_path), step=4, model=m, optimizer=opt, config={"a": 1}, metrics_offset=17)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    m2, opt2 = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)), None
    opt2 = torch.optim.AdamW(m2.parameters(), lr=1e-2)
    state = ck.load_checkpoint(ck.latest_checkpoint(str(tmp_path)), model=m2, optimizer=opt2)
    assert state["step"] == 4 and state["metrics_offset"] == 17 and state["config"] == {"a": 1}
    assert ck.latest_checkpoint(str(tmp_path)) == path
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], opt2.state_dict()["state"][0]["exp_avg"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    m, opt = _model()
    ck.save_checkpoint(str(tmp_path), step=1, model=m, optimizer=opt, config={}, metrics_offset=10)
    before = [p.detach().clone() for p in m.parameters()]
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)
    real_save = torch.save

    def crash(obj, f, *a, **k):
        if str(f).endswith("rng.pt"):
            raise OSError("disk full (simulated crash mid-checkpoint)")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="simulated"):
        ck.save_checkpoint(str(tmp_path), step=2, model=m, optimizer=opt, config={}, metrics_offset=20)
    monkeypatch.setattr(torch, "save", real_save)
    latest = ck.latest_checkpoint(str(tmp_path))
    assert os.path.basename(latest) == "step_000001"
    assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "step_000002"))
    state = ck.load_checkpoint(latest, model=m, optimizer=opt)
    assert state["metrics_offset"] == 10
    for a, b in zip(m.parameters(), before):
        assert torch.equal(a, b)
    # the next successful save cleans the half-written leftovers and prunes old checkpoints
    ck.save_checkpoint(str(tmp_path), step=2, model=m, optimizer=opt, config={}, metrics_offset=20, keep=1)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["LATEST", "step_000002"]


def test_truncate_metrics(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n')
    ck.truncate_metrics(str(path), len('{"step": 1}\n'))
    assert path.read_text() == '{"step": 1}\n'
