"""The recipe parts of training (schedules, EMA, lookahead, smoothing, early stopping, TTA) and resume-after-kill."""

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from classiflow.config import DataParams, TrainParams
from classiflow.data.download import download
from classiflow.data.prepare import prepare
from classiflow.errors import ClassiflowError
from classiflow.layout import Layout
from classiflow.models import build_model
from classiflow.stages import augment as augment_stage
from classiflow.stages import train as train_stage
from classiflow.training import autocast, fit
from classiflow.training.optim import lr_factor, make_optimizer, make_scheduler
from tests.conftest import REPO, shrunk_params, shrunk_train
from tests.imagegen import write_image_folder
from tests.test_models_training import _toy_data


def _fit(**cfg):
    model = build_model("simplecnn", 1, 2, 16)
    return model, fit(model, _toy_data(), shrunk_train(**cfg))


def test_cosine_warmup_rises_then_decays_to_zero():
    cfg = shrunk_train(epochs=4, scheduler="cosine", warmup_epochs=1, lr=0.1)
    factor = lr_factor(cfg, steps_per_epoch=10)
    rising = [factor(s) for s in range(10)]
    assert rising == sorted(rising) and rising[-1] == pytest.approx(1.0)
    assert factor(25) < factor(15) < 1.0
    assert factor(40) == pytest.approx(0.0, abs=1e-9)


def test_onecycle_peaks_at_lr_inside_the_run():
    _, result = _fit(epochs=4, batch_size=16, scheduler="onecycle", lr=0.05, warmup_epochs=2)
    lrs = [h["lr"] for h in result.history]
    assert lrs[0] < 0.05 and max(lrs) == pytest.approx(0.05, rel=0.05) and lrs[-1] < max(lrs)


def test_weight_decay_skips_norm_and_bias_parameters():
    model = build_model("resnet8", 3, 10, 32)
    opt = make_optimizer(model, shrunk_train(weight_decay=5e-4, optimizer="sgd", nesterov=True))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim <= 1 for p in plain["params"])
    assert opt.defaults["nesterov"] is True


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_every_optimizer_learns_with_smoothing_ema_and_clipping(optimizer):
    lr = 0.05 if optimizer == "sgd" else 0.003
    _, result = _fit(
        epochs=4,
        batch_size=16,
        optimizer=optimizer,
        lr=lr,
        label_smoothing=0.1,
        ema=0.9,
        grad_clip=1.0,
        scheduler="cosine",
    )
    assert result.best_val_accuracy >= 0.9


def test_ema_weights_are_what_is_kept():
    model, result = _fit(epochs=2, batch_size=16, lr=0.05, ema=0.5)
    assert all(torch.equal(model.state_dict()[k], result.best_state[k]) for k in result.best_state)
    assert "n_averaged" not in result.best_state


def test_lookahead_moves_the_weights_to_their_slow_average_and_ends_on_it():
    from classiflow.training.optim import Lookahead

    model = torch.nn.Linear(1, 1, bias=False)
    weight = model.weight
    with torch.no_grad():
        weight.fill_(1.0)
    la = Lookahead(model, every=2, total_steps=5)
    values = [3.0, 5.0, 7.0, 9.0, 11.0]
    slow, seen = 1.0, []
    for step, value in enumerate(values, start=1):
        with torch.no_grad():
            weight.fill_(value)  # what the optimiser step left
        la.update(model)
        if step % 2 == 0:
            slow += (1 - 0.95**2 * (step / 5) ** 3) * (value - slow)
        seen.append(weight.item())
    assert seen[0] == 3.0 and seen[2] == 7.0  # between pulls the weights are the optimiser's
    assert seen[1] == pytest.approx(1 + (1 - 0.95**2 * 0.4**3) * 4)
    assert seen[4] == pytest.approx(slow)  # the last step ends on the average, even off the period
    restored = Lookahead(torch.nn.Linear(1, 1, bias=False), every=2, total_steps=5)
    restored.load_state_dict(la.state_dict())
    assert restored.steps == 5 and restored.slow[0].item() == pytest.approx(slow)


def test_a_run_with_lookahead_learns():
    _, result = _fit(epochs=4, batch_size=16, lr=0.05, lookahead=3)
    assert result.best_val_accuracy >= 0.9


def test_early_stopping_stops_after_patience():
    _, result = _fit(epochs=30, batch_size=16, lr=0.05, early_stopping=2)
    assert len(result.history) < 30
    best = max(h["val_accuracy"] for h in result.history)
    assert all(h["val_accuracy"] <= best for h in result.history[result.best_epoch :])
    assert len(result.history) - result.best_epoch == 2


def test_min_steps_runs_more_epochs_on_small_data():
    from classiflow.training.loop import planned_epochs

    assert planned_epochs(TrainParams(epochs=2, min_steps=150), steps_per_epoch=87) == 2  # CIFAR-10 at batch 512
    assert planned_epochs(TrainParams(epochs=2, min_steps=150), steps_per_epoch=7) == 22  # 3,600 images
    _, result = _fit(epochs=1, min_steps=25, batch_size=16, lr=0.05)
    assert len(result.history) == 3  # 160 training images: 10 steps an epoch


def test_bf16_autocast_and_channels_last_train_on_cpu():
    _, result = _fit(epochs=2, batch_size=16, lr=0.05, precision="bf16", channels_last=True)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


@pytest.mark.parametrize("native", [False, True])
def test_a_run_records_what_auto_precision_resolved_to(monkeypatch, native):
    from classiflow.training import device as dev

    monkeypatch.setattr(dev, "native_bf16", lambda: native)
    _, result = _fit(epochs=1, batch_size=16, lr=0.05, precision="auto")
    assert result.precision == ("bf16" if native else "fp32")


def test_fp16_on_cpu_is_a_clear_error():
    with pytest.raises(ClassiflowError, match="fp16"):
        autocast(torch.device("cpu"), "fp16")


def _project(tmp_path, name="a"):
    folder = write_image_folder(tmp_path / "shapes", per_class=40, size=32)
    layout = Layout.at(tmp_path / name)
    download(str(folder), layout.raw)
    prepare(layout.raw, layout.prepared, DataParams(image_size=32, val_fraction=0.2))
    augment_stage.run(layout, RESUME)
    return layout


RESUME = shrunk_params(
    {
        "model": {"name": "resnet8"},
        "augment": {"flip": True, "translate": 2, "erasing": 0.5, "mix": "mixup"},
        "train": {"epochs": 6, "lr": 0.05, "scheduler": "cosine", "ema": 0.9, "lookahead": 3},
    }
)


@pytest.mark.integration
def test_killed_train_stage_resumes_to_the_same_weights(tmp_path):
    """kill -9 mid-run, rerun with the same params: same final weights as never stopping."""
    killed = _project(tmp_path, "killed")
    straight = Layout.at(tmp_path / "straight")
    shutil.copytree(killed.prepared, straight.prepared)
    shutil.copytree(killed.augmented, straight.augmented)
    params = RESUME
    code = (
        "import json, sys; from classiflow.config import parse_params; from classiflow.layout import Layout;"
        "from classiflow.stages import train; train.run(Layout.at(sys.argv[1]), parse_params(json.loads(sys.argv[2])))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(killed.root), json.dumps(RESUME.model_dump(by_alias=True))],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not killed.last_checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert killed.last_checkpoint.exists() and not killed.model.exists()

    resumed = train_stage.run(killed, params).value
    assert 1 <= resumed["resumed_from_epoch"] < 6
    assert killed.last_checkpoint.exists(), "kept until the run is recorded (classiflow.tracking.stage removes it)"
    again = train_stage.run(killed, params).value
    assert again["resumed_from_epoch"] == 6 and again["best_val_accuracy"] == resumed["best_val_accuracy"]
    uninterrupted = train_stage.run(straight, params).value
    assert uninterrupted["resumed_from_epoch"] == 0
    a, b = (torch.load(x.model, weights_only=True)["state_dict"] for x in (killed, straight))
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = [line.split(",")[0] for line in killed.train_history.read_text().splitlines()[1:]]
    assert history == [str(e) for e in range(1, 7)]


def test_a_resume_point_is_used_only_by_the_same_configuration(tmp_path):
    from classiflow.training.loop import Resume

    path = tmp_path / "last.pt"
    cfg = shrunk_train(epochs=2, lr=0.05)
    first = fit(build_model("simplecnn", 1, 2, 16), _toy_data(), cfg, resume=Resume(path, "A"))
    assert path.exists() and first.resumed_from_epoch == 0
    again = fit(build_model("simplecnn", 1, 2, 16), _toy_data(), cfg, resume=Resume(path, "A"))
    assert again.resumed_from_epoch == 2 and again.history == first.history
    other = fit(build_model("simplecnn", 1, 2, 16), _toy_data(), cfg, resume=Resume(path, "B"))
    assert other.resumed_from_epoch == 0
    path.write_bytes(b"torn")
    assert fit(build_model("simplecnn", 1, 2, 16), _toy_data(), cfg, resume=Resume(path, "B")).resumed_from_epoch == 0


def test_a_train_state_restores_what_it_captured(tmp_path):
    from classiflow.training.optim import make_ema, make_lookahead, make_scheduler
    from classiflow.training.resume import load_state, save_state
    from classiflow.training.state import TrainState

    def new_state(seed: int) -> TrainState:
        torch.manual_seed(seed)
        model = build_model("simplecnn", 1, 2, 16)
        cfg = shrunk_train(ema=0.9)
        optimizer = make_optimizer(model, cfg)
        return TrainState(
            model, optimizer, make_scheduler(optimizer, cfg, 10), torch.amp.GradScaler("cpu", enabled=False),
            make_ema(model, cfg.ema), {"order": torch.Generator().manual_seed(seed)}, make_lookahead(model, 2, 10),
        )  # fmt: skip

    saved = new_state(0)
    saved.end_epoch({"epoch": 1, "val_accuracy": 0.75, "epoch_seconds": 2.0}, saved.model)
    for _ in range(3):
        saved.lookahead.update(saved.model)
    save_state(tmp_path / "last.pt", saved.capture("fp"))
    restored = new_state(1)
    restored.restore(load_state(tmp_path / "last.pt", "fp"))
    assert (restored.epoch, restored.best_epoch, restored.best_val_accuracy, restored.train_time) == (1, 1, 0.75, 2.0)
    before, after = saved.model.state_dict(), restored.model.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert restored.lookahead.steps == 3
    assert all(torch.equal(a, b) for a, b in zip(saved.lookahead.slow, restored.lookahead.slow, strict=True))
    draw = {name: torch.randperm(9, generator=s.generators["order"]) for name, s in (("a", saved), ("b", restored))}
    assert torch.equal(draw["a"], draw["b"])


@pytest.mark.parametrize("steps, warmup", [(1, 0.25), (2, 0.5), (3, 0.25), (4, 0.25), (5, 0.2), (8, 0.25)])
def test_onecycle_takes_runs_of_a_few_steps(steps, warmup):
    """A tiny data set gives a handful of steps; OneCycle divided by zero where the rise was exactly one step."""
    cfg = shrunk_train(scheduler="onecycle", epochs=1, warmup_epochs=warmup)
    optimizer = make_optimizer(torch.nn.Linear(2, 2), cfg)
    scheduler = make_scheduler(optimizer, cfg, steps)
    lrs = []
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert all(0.0 < lr <= cfg.lr * 1.0001 for lr in lrs)


@pytest.mark.parametrize("cycle", [None, 0.97])
def test_momentum_means_what_it_says_under_onecycle(cycle):
    """train.momentum is the momentum at the peak rate; OneCycle raises it to momentum_cycle only when set."""
    cfg = TrainParams(scheduler="onecycle", momentum=0.9, momentum_cycle=cycle, epochs=2, lr=0.1, warmup_epochs=0.5)
    optimizer = make_optimizer(torch.nn.Linear(3, 2), cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch=10)
    seen = []
    for _ in range(20):
        seen.append((optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["momentum"]))
        optimizer.step()
        scheduler.step()
    at_peak = max(seen)[1]
    assert at_peak == pytest.approx(0.9)
    assert max(m for _, m in seen) == pytest.approx(cycle or 0.9, abs=1e-3 if cycle else 0)
    assert min(m for _, m in seen) == pytest.approx(0.9)


def test_a_momentum_cycle_below_momentum_is_refused():
    with pytest.raises(ValueError, match="momentum_cycle 0.8 is below train.momentum 0.9"):
        TrainParams(scheduler="onecycle", momentum=0.9, momentum_cycle=0.8)
    assert TrainParams(scheduler="step", momentum=0.97).momentum == 0.97


def test_auto_precision_is_bf16_only_where_the_cpu_has_bf16_units(monkeypatch):
    from classiflow.training import device as dev

    cpu = torch.device("cpu")
    monkeypatch.setattr(dev, "native_bf16", lambda: False)
    assert dev.resolve_precision(cpu, "auto") == "fp32"
    assert isinstance(dev.autocast(cpu, "auto"), contextlib.nullcontext)
    monkeypatch.setattr(dev, "native_bf16", lambda: True)
    assert dev.resolve_precision(cpu, "auto") == "bf16"
    with dev.autocast(cpu, "auto"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    assert dev.resolve_precision(cpu, "fp32") == "fp32"


def test_channels_last_is_kept_off_on_cpu_for_a_strided_1x1_conv_over_few_channels():
    """oneDNN#6035: its AVX2 weight-gradient kernel for such a conv breaks in channels_last (a pruned shortcut)."""
    import classiflow.training.device as dev

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    shortcut = torch.nn.Sequential(torch.nn.Conv2d(6, 12, 1, stride=2), torch.nn.ReLU())
    wide = torch.nn.Sequential(torch.nn.Conv2d(8, 12, 1, stride=2), torch.nn.Conv2d(4, 12, 3, stride=2))
    assert dev.training_memory_format(shortcut, cpu, True) == torch.contiguous_format
    assert dev.training_memory_format(shortcut, cuda, True) == torch.channels_last
    assert dev.training_memory_format(wide, cpu, True) == torch.channels_last
    assert dev.training_memory_format(wide, cpu, False) == torch.contiguous_format


def test_a_strided_1x1_conv_over_few_channels_gets_the_nchw_weight_gradient():
    """Through the guard, on two threads (where channels_last gave gradients 42% off on a Zen 3)."""
    import classiflow.training.device as dev

    torch.manual_seed(0)
    conv, x = torch.nn.Conv2d(6, 12, 1, stride=2, bias=False), torch.randn(16, 6, 16, 16)
    grads, threads = [], torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for fmt in (torch.contiguous_format, dev.training_memory_format(conv, torch.device("cpu"), True)):
            conv.zero_grad()
            conv.to(memory_format=fmt)(x.contiguous(memory_format=fmt)).square().sum().backward()
            grads.append(conv.weight.grad.clone())
    finally:
        torch.set_num_threads(threads)
    torch.testing.assert_close(grads[1], grads[0])
