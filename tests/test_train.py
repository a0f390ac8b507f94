import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine.jobs import Checkpoint, Done, Loss, Preview, Progress, Requests, execute
from engine.training.run_dir import RunDir
from engine.training.train import TrainJob
from tests.conftest import StopAfter, tiny_config


def run(job, cancel_after=None, requests=None):
    """The job's events, ending with how it ended (a Done)."""
    events = []
    requests = requests or (StopAfter(cancel_after) if cancel_after is not None else Requests())
    events.append(execute(job, events.append, requests))
    return events


@pytest.mark.parametrize("loss", ["l2", "huber"])
def test_loss_falls_on_phantoms(tmp_path, phantoms16, loss):
    cfg = tiny_config(steps=80, loss=loss, lr=2e-3)
    events = run(TrainJob(cfg, tmp_path / "run", data=phantoms16))
    losses = [e.loss for e in events if isinstance(e, Loss)]
    assert len(losses) == 20  # every 4 steps: a twentieth of the run is finer than the preset's 5
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:2])
    rows = [json.loads(line) for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(4, 81, 4))
    assert isinstance(events[-1], Done) and events[-1].result["step"] == 80


def test_run_directory_holds_config_checkpoints_and_log(tiny_run):
    assert (tiny_run / "config.json").exists() and (tiny_run / "loss.jsonl").exists()
    ckpts = RunDir(tiny_run).checkpoints()
    assert [p.name for p in ckpts] == ["step_0000010", "step_0000020"]
    for name in ("model", "ema", "optimizer"):
        assert (ckpts[-1] / f"{name}.safetensors").exists()
    state = json.loads((ckpts[-1] / "state.json").read_text())
    assert state["step"] == 20 and state["config"]["facts"]["image_channels"] == 1
    assert state["config"]["facts"]["mask_labels"] == 3 and state["config"]["facts"]["num_classes"] == 4


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, phantoms16):
    straight = tmp_path / "straight"
    run(TrainJob(tiny_config(steps=20), straight, data=phantoms16))
    split = tmp_path / "split"
    # Cancel partway: the job saves a checkpoint at the step it stopped on.
    events = run(TrainJob(tiny_config(steps=20), split, data=phantoms16), cancel_after=7)
    done = events[-1]
    assert done.cancelled and done.result["step"] == 7
    assert any(isinstance(e, Checkpoint) and e.step == 7 for e in events)
    events = run(TrainJob(None, split, resume=True, data=phantoms16))
    assert events[-1].result["step"] == 20
    a = RunDir(straight).latest()
    b = RunDir(split).latest()
    for name in ("model", "ema", "optimizer"):
        wa, wb = load_file(a / f"{name}.safetensors"), load_file(b / f"{name}.safetensors")
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=f"{name}.{k}")
    la = (straight / "loss.jsonl").read_text().splitlines()
    lb = (split / "loss.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in la] == [json.loads(x)["step"] for x in lb]


def test_resume_can_extend_the_step_count(tmp_path, phantoms16):
    run_dir = tmp_path / "run"
    run(TrainJob(tiny_config(steps=10), run_dir, data=phantoms16))
    events = run(TrainJob(None, run_dir, resume=True, steps=15, data=phantoms16))
    assert events[-1].result["step"] == 15


def test_new_run_refuses_a_folder_that_holds_one(tiny_run, phantoms16):
    from engine.errors import InputError

    with pytest.raises(InputError, match="already holds a training run; resume it"):
        TrainJob(tiny_config(), tiny_run, data=phantoms16)


def test_save_now_and_preview_now_requests(tmp_path, phantoms16):
    req = Requests()
    req.save_now()
    req.preview_now()
    cfg = tiny_config(steps=3)
    cfg.train.checkpoint_every = 1000
    events = run(TrainJob(cfg, tmp_path / "run", data=phantoms16), requests=req)
    assert [e.step for e in events if isinstance(e, Checkpoint)] == [1, 3]
    previews = [e for e in events if type(e).__name__ == "Preview"]
    assert len(previews) == 1 and previews[0].images.shape == (8, 1, 16, 16)


def test_a_short_run_logs_a_curve_and_previews_report_their_progress(tmp_path, phantoms16):
    # pairs-64 logs every 50 steps: a 40-step run used to log once, at its end.
    req = Requests()
    req.preview_now()
    cfg = tiny_config(steps=40, log_every=50)
    events = run(TrainJob(cfg, tmp_path / "run", data=phantoms16, preview_at_end=True), requests=req)
    assert [e.step for e in events if isinstance(e, Loss)] == list(range(2, 41, 2))
    assert [e.step for e in events if isinstance(e, Preview)] == [1, 40]  # asked for, and the final weights'
    ticks = [(e.info["step"], e.done, e.total) for e in events if isinstance(e, Progress) and e.stage == "preview"]
    assert ticks == [(1, i, 25) for i in range(1, 26)] + [(40, i, 25) for i in range(1, 26)]


def test_stop_during_a_preview_cuts_it_short(tmp_path, phantoms16):
    req = Requests()
    req.preview_now()
    events: list = []

    def emit(ev):
        events.append(ev)
        if isinstance(ev, Progress) and ev.stage == "preview" and ev.done == 3:
            req.stop()

    events.append(execute(TrainJob(tiny_config(steps=40), tmp_path / "run", data=phantoms16, preview_at_end=True),
                          emit, req))
    assert not [e for e in events if isinstance(e, Preview)]
    assert max(e.done for e in events if isinstance(e, Progress) and e.stage == "preview") == 3
    assert events[-1].cancelled and events[-1].result["step"] == 1


def test_mask_conditioned_and_unconditional_models_train(tmp_path, phantoms16):
    for mode in ("condition", "none"):
        cfg = tiny_config(steps=2, mask_mode=mode)
        cfg.data.class_conditional = mode == "none"
        events = run(TrainJob(cfg, tmp_path / mode, data=phantoms16))
        assert events[-1].result["step"] == 2


def test_cosine_schedule_warms_up_then_falls_to_a_tenth():
    from engine.training.steps import lr_at

    assert lr_at(0, 1.0, 10, 110, "cosine") == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 110, "cosine") == pytest.approx(1.0)
    assert lr_at(60, 1.0, 10, 110, "cosine") == pytest.approx(0.55)
    assert lr_at(110, 1.0, 10, 110, "cosine") == pytest.approx(0.1)
    assert lr_at(60, 1.0, 10, 110) == 1.0  # constant stays flat


def test_ema_follows_weights_moved_after_it_was_made():
    # On a GPU the network moves (to the device, to channels-last) after its EMA is made. The EMA held
    # aliases of the weights' old storage, so it stayed at the initial weights there.
    from engine.training.ema import EMA

    net = torch.nn.Conv2d(2, 2, 3)
    ema = EMA(net, decay=0.5)
    net = net.to(memory_format=torch.channels_last)
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(step=1000)
    torch.testing.assert_close(ema.shadow["weight"], net.weight.detach() - 0.5)


def test_the_noising_step_targets_the_noise_or_v_and_appends_the_condition():
    from types import SimpleNamespace

    from engine.training.steps import Batch, noised_loss

    x0, noise = torch.randn(4, 2, 8, 8), torch.randn(4, 2, 8, 8)
    t = torch.tensor([0, 10, 500, 999])
    alphas = torch.linspace(0.999, 0.01, 1000)
    a = alphas[t].view(-1, 1, 1, 1)
    seen = {}

    def zero_net(inp, timesteps, class_labels=None):
        seen["inp"], seen["labels"] = inp, class_labels
        return SimpleNamespace(sample=torch.zeros_like(x0))

    tc = tiny_config().train
    tc.objective, tc.loss = "epsilon", "l2"
    torch.testing.assert_close(noised_loss(zero_net, Batch(x0, noise, t), alphas, tc), noise.pow(2).mean())
    torch.testing.assert_close(seen["inp"], a.sqrt() * x0 + (1 - a).sqrt() * noise)
    tc.objective = "v_prediction"
    v = a.sqrt() * noise - (1 - a).sqrt() * x0
    labels = torch.tensor([0, 1, 2, 3])
    cond = torch.ones(4, 1, 8, 8)
    loss = noised_loss(zero_net, Batch(x0, noise, t, cond=cond, labels=labels), alphas, tc)
    torch.testing.assert_close(loss, v.pow(2).mean())
    assert seen["inp"].shape == (4, 3, 8, 8) and torch.equal(seen["inp"][:, 2:], cond)
    assert seen["labels"] is labels
