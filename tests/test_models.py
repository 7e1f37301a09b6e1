import pytest
import torch
import torch.nn.functional as F
from torch import nn

from classiflow.errors import ClassiflowError
from classiflow.models import MODELS, build_model
from classiflow.models.cbam import CBAM
from classiflow.models.fastnet import FastNet
from classiflow.models.resnet import BasicBlock

CONV_MODELS = [name for name in MODELS if name != "vit"]
SHAPES = [(3, 32), (1, 28), (3, 8)]
CBAM_COUNT = {"simplecnn": 2, "lenet5": 2, "resnet8": 3, "resnet20": 9, "resnet56": 27, "fastnet": 3}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def _check_forward_backward(model: nn.Module, channels: int, size: int, num_classes: int = 7) -> None:
    x = torch.randn(2, channels, size, size)
    out = model(x)
    assert out.shape == (2, num_classes)
    out.square().sum().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("channels,size", SHAPES)
@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_takes_the_data_shapes(name, channels, size):
    _check_forward_backward(build_model(name, channels, 7, size), channels, size)


@pytest.mark.parametrize("name", ["lenet5", "resnet20", "vit", "fastnet"])
def test_larger_colour_images(name):
    _check_forward_backward(build_model(name, 3, 7, 64), 3, 64)


@pytest.mark.parametrize("channels,size", SHAPES)
@pytest.mark.parametrize("name", CONV_MODELS)
def test_every_conv_model_takes_cbam(name, channels, size):
    model = build_model(name, channels, 7, size, attention="cbam", cbam_reduction=4)
    assert sum(isinstance(m, CBAM) for m in model.modules()) == CBAM_COUNT[name]
    assert not any(isinstance(m, CBAM) for m in build_model(name, channels, 7, size).modules())
    _check_forward_backward(model, channels, size)


def test_cbam_hidden_size_never_drops_to_zero():
    block = CBAM(6, reduction=16)
    assert block.channel.mlp[0].out_features == 1
    x = torch.randn(2, 6, 5, 5)
    assert block(x).shape == x.shape


def test_vit_refuses_cbam_and_bad_sizes():
    with pytest.raises(ClassiflowError, match="vit takes no attention"):
        build_model("vit", 3, 10, 32, attention="cbam")
    with pytest.raises(ClassiflowError, match="image size 30 must be a positive multiple of the patch size 4"):
        build_model("vit", 3, 10, 30)
    with pytest.raises(ClassiflowError, match="model.width: vit width 200 must divide by its 3 heads"):
        build_model("vit", 3, 10, 32, width=200)


def test_vit_defaults_and_derived_heads():
    model = build_model("vit", 3, 10, 32)
    layers = model.encoder.layers
    assert len(layers) == 6 and layers[0].self_attn.num_heads == 3 and layers[0].linear1.out_features == 384
    assert model.pos_embed.shape == (1, 8 * 8 + 1, 192)
    assert build_model("vit", 3, 10, 32, width=64).encoder.layers[0].self_attn.num_heads == 1


def test_width_and_attention_errors():
    for name in ("simplecnn", "lenet5"):
        with pytest.raises(ClassiflowError, match=f"^model.width: {name} has no width option$"):
            build_model(name, 3, 10, 32, width=32)
    with pytest.raises(ClassiflowError, match="model.width 0: must be a positive integer"):
        build_model("resnet20", 3, 10, 32, width=0)
    with pytest.raises(ClassiflowError, match="model.attention 'se': unknown"):
        build_model("resnet20", 3, 10, 32, attention="se")
    with pytest.raises(ClassiflowError, match="unknown model \\(available: fastnet, lenet5, resnet20, resnet56"):
        build_model("resnet9000", 3, 10, 32)


def test_lenet5_layers_are_the_described_ones():
    model = build_model("lenet5", 1, 10, 32)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 6, (5, 5), (0, 0)),
        (6, 16, (5, 5), (0, 0)),
    ]
    assert [(fc.in_features, fc.out_features) for fc in linears] == [(16 * 5 * 5, 120), (120, 84), (84, 10)]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2


def test_lenet5_pads_small_and_resizes_large_inputs():
    model = build_model("lenet5", 1, 10, 28).eval()
    seen = []
    model.features[0].register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape[-2:])))
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(x), model(F.pad(x, (2, 2, 2, 2))), atol=1e-6)  # 2 zero pixels a side
        big = torch.randn(3, 1, 64, 64)
        resized = F.interpolate(big, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
        assert torch.allclose(model(big), model(resized), atol=1e-6)
    assert seen == [(32, 32)] * 4


@pytest.mark.parametrize("name,n", [("resnet8", 1), ("resnet20", 3), ("resnet56", 9)])
def test_resnet_depth_and_shortcuts(name, n):
    model = build_model(name, 3, 10, 32)
    convs3 = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs3) == 6 * n + 1
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 3 * n
    projections = [i for i, b in enumerate(blocks) if not isinstance(b.shortcut, nn.Identity)]
    assert projections == [n, 2 * n]  # first block of stages 2 and 3, where channels double and stride is 2
    for b in blocks:
        changes = b.conv1.in_channels != b.conv2.out_channels or b.conv1.stride != (1, 1)
        assert changes == (not isinstance(b.shortcut, nn.Identity))
    assert [b.conv2.out_channels for b in blocks[:: max(n, 1)]] == [16, 32, 64]


def test_resnet_parameter_count_and_width():
    count = sum(p.numel() for p in build_model("resnet20", 3, 10, 32).parameters())
    assert 260_000 <= count <= 280_000
    assert build_model("resnet20", 3, 10, 32, width=8).head.in_features == 32


def test_fastnet_structure_and_frozen_parameters():
    model = build_model("fastnet", 3, 10, 32)
    assert model.whiten.kernel_size == (2, 2) and model.whiten.out_channels == 24 and model.whiten.padding == (0, 0)
    assert not model.whiten.weight.requires_grad and model.whiten.bias.requires_grad
    assert [g.conv2.out_channels for g in model.groups] == [64, 256, 256]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 6
    assert all(not bn.weight.requires_grad and bn.bias.requires_grad for bn in norms)
    assert all(bn.eps == 1e-12 and bn.momentum == 0.4 for bn in norms)
    assert model.head.bias is None
    assert build_model("fastnet", 1, 10, 28, width=16).whiten.out_channels == 8


@pytest.mark.parametrize("size", [2, 3, 5])
def test_fastnet_tiny_images(size):
    _check_forward_backward(FastNet(3, 7, size), 3, size)


def test_fastnet_data_init_whitens_the_patches():
    model = FastNet(3, 10, 16)
    # Smooth images: neighbouring pixels and channels are strongly correlated, as in real photos.
    images = F.interpolate(torch.randn(64, 3, 4, 4), size=(16, 16), mode="bilinear") + 0.1 * torch.randn(64, 3, 16, 16)

    def second_moment() -> torch.Tensor:
        out = F.conv2d(images, model.whiten.weight[:12])  # the bias is zero at init; the negated half is redundant
        flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
        return flat.T @ flat / len(flat)

    before = model.whiten.weight.clone()
    assert (second_moment() - torch.eye(12)).abs().max() > 0.5
    model.data_init(images)
    assert not torch.equal(model.whiten.weight, before)
    assert torch.allclose(second_moment(), torch.eye(12), atol=0.06)
    assert torch.equal(model.whiten.weight[12:], -model.whiten.weight[:12])
    assert not model.whiten.weight.requires_grad
    with pytest.raises(ValueError, match="N, 3, H, W"):
        model.data_init(images[:, :1])
