"""The zoo's parameter counts against numbers measured independently (the d2l book's PyTorch code, as
recorded in FRAMEWORK-NOTES.md and the book) and hand arithmetic."""

from __future__ import annotations

import pytest

import deferinit as di
from deferinit import zoo

# trainable parameter counts of the book's PyTorch models at the book's inputs
BOOK_TRAINABLE = {
    "lenet": 61_706,
    "bn_lenet": 44_878,      # FRAMEWORK-NOTES: the JAX chapter's 108,238 comes from SAME padding
    "densenet": 758_226,     # FRAMEWORK-NOTES: the JAX chapter's 700,586 never accumulates transition channels
    "regnetx32": 179_290,    # FRAMEWORK-NOTES: the MXNet chapter's 6,291,594 widens every later block
    "alexnet": 46_764_746,
}


@pytest.mark.parametrize("name", sorted(BOOK_TRAINABLE))
def test_book_counts(name: str) -> None:
    report = di.infer_shapes(zoo.MODELS[name](), zoo.BOOK_INPUTS[name])
    assert report.trainable_params == BOOK_TRAINABLE[name]
    assert report.output_shape == (zoo.BOOK_INPUTS[name][0], 10)


def test_vgg11_by_hand() -> None:
    convs = [(1, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512), (512, 512)]
    conv = sum(i * o * 9 + o for i, o in convs)
    dense = (512 * 7 * 7) * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 10 + 10  # 224 halved 5 times = 7
    assert di.infer_shapes(zoo.vgg11(), (1, 1, 224, 224)).total_params == conv + dense


def test_resnet18_structure() -> None:
    r = di.infer_shapes(zoo.resnet18(), (1, 1, 96, 96))
    assert r.layers["0"].output_shape == (1, 64, 24, 24)  # 96 -> 48 (conv s2) -> 24 (pool s2)
    assert r.layers["4"].output_shape == (1, 512, 3, 3)
    assert r.params["2.0.shortcut.weight"].shape == (128, 64, 1, 1)
    assert "1.0.shortcut.weight" not in r.params  # the first stage keeps its identity shortcuts
    # the stem conv has 1*64*49 + 64 params; everything is derived from the spec at 96x96
    assert r.params["0.0.weight"].shape == (64, 1, 7, 7)


def test_googlenet_inception_concat() -> None:
    r = di.infer_shapes(zoo.googlenet(), (1, 1, 96, 96))
    # 96 -> 48 (7x7 conv, stride 2) -> 24 (pool) -> 12 (b2's pool): the first inception sees 12x12
    assert r.layers["2.0"].output_shape == (1, 64 + 128 + 32 + 32, 12, 12)
    assert r.layers["4"].output_shape == (1, 1024)


def test_resnext_block_groups() -> None:
    r = di.infer_shapes(di.LazyModel([zoo.resnext_block(32, 16, 1)]), (4, 32, 96, 96))
    assert r.output_shape == (4, 32, 96, 96)
    assert r.params["0.body.3.weight"].shape == (32, 16, 3, 3)  # 32 channels in 2 groups of 16


@pytest.mark.parametrize("name", sorted(zoo.BOOK_INPUTS))
def test_varying_input_sizes(name: str) -> None:
    spec = zoo.MODELS[name]()
    shape = zoo.BOOK_INPUTS[name]
    dtype = "int64" if name in zoo.INT_INPUTS else "float32"
    fixed = di.infer_shapes(spec, shape, dtype=dtype)
    fixed_params = {n: p.shape for n, p in fixed.params.items()}
    if name in zoo.INT_INPUTS:  # token models: any batch and any sequence length
        varying = di.infer_shapes(spec, (None, None), dtype=dtype)
        assert varying.output_shape[:2] == (None, None)
        assert {n: p.shape for n, p in varying.params.items()} == fixed_params
    elif name in ("resnet18", "densenet", "googlenet", "nin", "regnetx32"):  # global pooling before the head
        varying = di.infer_shapes(spec, (None, shape[1], None, None))
        assert varying.output_shape == (None, 10)
        assert {n: p.shape for n, p in varying.params.items()} == fixed_params
        for size in ((128, 160) if name == "nin" else (64, 128)):  # NiN's pools need more than 64 pixels
            other = di.infer_shapes(spec, (1, 1, size, size))
            assert other.output_shape == (1, 10)
            assert {n: p.shape for n, p in other.params.items()} == fixed_params
    elif name == "vit":  # the learned position embedding depends on the number of patches
        with pytest.raises(di.ShapeMismatchError, match=r"\(PositionEmbedding\).*known size for the number of steps"):
            di.infer_shapes(spec, (None, 3, None, None))
    elif len(shape) == 4:  # a Dense after Flatten depends on the spatial size
        with pytest.raises(di.ShapeMismatchError, match="known size"):
            di.infer_shapes(spec, (None, shape[1], None, None))


@pytest.mark.parametrize("name", sorted(zoo.MODELS))
def test_example_spec_files_match_the_zoo(name: str) -> None:
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "zoo" / f"{name}.json"
    assert di.load_spec(path) == zoo.MODELS[name](), f"regenerate {path} with di.save_spec"
