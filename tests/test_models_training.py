import numpy as np
import pytest
import torch

from classiflow.checkpoint import load_checkpoint, model_spec, save_checkpoint
from classiflow.data.prepared import PreparedData
from classiflow.errors import ClassiflowError
from classiflow.models import build_model
from classiflow.models.simplecnn import SimpleCNN
from classiflow.training import fit, select_device
from tests.conftest import shrunk_train


@pytest.mark.parametrize("channels,size", [(3, 32), (1, 28), (3, 64)])
def test_simplecnn_shapes_and_backward(channels, size):
    model = build_model("simplecnn", channels, 7, size)
    x = torch.randn(4, channels, size, size, requires_grad=True)
    out = model(x)
    assert out.shape == (4, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_simplecnn_matches_the_article_layers():
    model = SimpleCNN(3, 10, 32)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (3, 16, (3, 3), (1, 1)),
        (16, 32, (3, 3), (1, 1)),
    ]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(32 * 8 * 8, 120), (120, 84), (84, 10)]


def test_unknown_model_lists_the_available_ones():
    with pytest.raises(ClassiflowError, match="unknown model.*simplecnn"):
        build_model("resnet9000", 3, 10, 32)


def _toy_data(n=240, size=16, seed=0) -> PreparedData:
    """Bright top half vs bright bottom half: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    images = rng.integers(0, 60, (n, size, size, 1)).astype(np.uint8)
    for i, y in enumerate(labels):
        rows = slice(0, size // 2) if y == 0 else slice(size // 2, size)
        images[i, rows] += 150
    meta = {
        "classes": ["top", "bottom"],
        "channels": 1,
        "image_size": size,
        "mean": [0.3],
        "std": [0.3],
        "data_hash": "toy",
    }
    split = {"train": slice(0, 160), "val": slice(160, 200), "test": slice(200, 240)}
    return PreparedData(meta, {k: images[s] for k, s in split.items()}, {k: labels[s] for k, s in split.items()})


def test_fit_learns_and_reports_history():
    data = _toy_data()
    model = build_model("simplecnn", 1, 2, 16)
    result = fit(model, data, shrunk_train(epochs=4, lr=0.01, scheduler="step"))
    assert len(result.history) == 4
    assert result.best_val_accuracy >= 0.9
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.history[-1]["lr"] == pytest.approx(0.01)


def test_step_lr_follows_the_schedule():
    result = fit(
        build_model("simplecnn", 1, 2, 16),
        _toy_data(),
        shrunk_train(epochs=3, lr=0.001, scheduler="step", step_size=1, gamma=0.5),
    )
    assert [h["lr"] for h in result.history] == pytest.approx([0.001, 0.0005, 0.00025])


def test_same_seed_gives_same_weights():
    cfg = shrunk_train(epochs=2, batch_size=32, optimizer="adam", lr=1e-3)
    a = fit(build_model("simplecnn", 1, 2, 16), _toy_data(), cfg).best_state
    b = fit(build_model("simplecnn", 1, 2, 16), _toy_data(), cfg).best_state
    c = fit(build_model("simplecnn", 1, 2, 16), _toy_data(), cfg.model_copy(update={"seed": 1})).best_state
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    data = _toy_data()
    model = build_model("simplecnn", 1, 2, 16)
    spec = model_spec("simplecnn", data.meta)
    save_checkpoint(tmp_path / "m.pt", model, spec, data.meta, {"epoch": 3})
    loaded, payload = load_checkpoint(tmp_path / "m.pt")
    assert payload["epoch"] == 3 and payload["classes"] == ["top", "bottom"]
    x = torch.randn(2, 1, 16, 16)
    model.eval()
    assert torch.equal(loaded(x), model(x))
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_bad_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"garbage")
    with pytest.raises(ClassiflowError, match="not a classiflow checkpoint"):
        load_checkpoint(tmp_path / "m.pt")
    with pytest.raises(ClassiflowError, match="run the train stage"):
        load_checkpoint(tmp_path / "none.pt")


def test_unavailable_device_is_refused():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ClassiflowError, match="not available"):
        select_device("cuda")
    assert select_device("auto").type in {"cpu", "mps"}


def test_train_stage_is_reproducible_whatever_the_global_rng(tmp_path):
    import shutil

    from classiflow.config import DataParams, Params
    from classiflow.data.download import download
    from classiflow.data.prepare import prepare
    from classiflow.layout import Layout
    from classiflow.stages import augment as augment_stage
    from classiflow.stages import train as train_stage
    from tests.imagegen import write_image_folder

    folder = write_image_folder(tmp_path / "shapes", per_class=12, size=16)
    a, b = Layout.at(tmp_path / "a"), Layout.at(tmp_path / "b")
    download(str(folder), a.raw)
    prepare(a.raw, a.prepared, DataParams(image_size=16, val_fraction=0.2))
    shutil.copytree(a.prepared, b.prepared)
    params = Params.model_validate({"train": {"epochs": 1, "batch_size": 8, "device": "cpu"}})
    augment_stage.run(a, params)
    augment_stage.run(b, params)
    torch.manual_seed(1)
    train_stage.run(a, params)
    torch.manual_seed(2)
    train_stage.run(b, params)
    wa, wb = (torch.load(x.model, weights_only=True)["state_dict"] for x in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
