"""The one structural walk (deferinit.adapters.tree) against independent truths: the plan's own paths and ties
for build, and the reference backend's own forward (its separate, older walk) for run."""

from __future__ import annotations

import numpy as np
import pytest

import deferinit as di
from cases import BY_ID, CASES
from deferinit import extend, ops
from deferinit.adapters import numpy as ref
from deferinit.adapters.tree import Builder, Runner, build, run
from deferinit.shapes import Node, plan


class Recorder(Builder[tuple]):
    """Builds nested tuples that say what was built, so the tree's shape can be read back."""

    backend = "recorder"

    def __init__(self) -> None:
        self.entered: list[str] = []

    def enter(self, node: Node):  # type: ignore[no-untyped-def]
        self.entered.append(node.path)
        return super().enter(node)

    def leaf(self, node: Node) -> tuple:
        return ("leaf", node.path, type(node.layer).__name__)

    def sequential(self, node: Node, children: list) -> tuple:
        return ("seq", node.path, tuple(children))

    def residual(self, node: Node, body: tuple, shortcut: tuple | None) -> tuple:
        return ("res", node.path, body, shortcut)

    def concat(self, node: Node, branches: list) -> tuple:
        return ("cat", node.path, tuple(branches))


def test_build_visits_every_position_once_and_shares_tied_objects() -> None:
    shared = di.Dense(4)
    block = di.Sequential([di.Dense(3), di.ReLU()])
    spec = di.LazyModel([shared, di.Residual(di.Sequential([shared]), shortcut=di.Identity()),
                         di.Concat([block, di.Dense(2, name="side")]), block])
    root = plan(spec)
    native, built = build(root, Recorder())
    positions = [n.path for n in root.walk()]
    assert sorted(built) == sorted(["", *positions])
    assert built["1.body.0"] is built["0"]  # tied leaf: the very object of the first use
    assert built["3"] is built["2.0"]  # tied container too
    assert native[0] == "seq" and [seg for seg, _ in native[2]] == ["0", "1", "2", "3"]
    assert built["2"][2][1][0] == "side"  # a name= replaces its segment
    assert built["1"][3] == ("leaf", "1.shortcut", "Identity")


def test_unsupported_container_names_the_layer() -> None:
    class NoConcat(Recorder):
        concat = Builder.concat  # type: ignore[assignment]

    with pytest.raises(di.UnsupportedLayerError, match=r"layer '0' \(Concat\) on backend recorder"):
        build(plan(di.LazyModel([di.Concat([di.Dense(2), di.Dense(3)])])), NoConcat())


class NumpyRunner(Runner[np.ndarray]):
    def __init__(self, net: ref.NumpyNet) -> None:
        self.net = net

    def leaf(self, node: Node, x: np.ndarray) -> np.ndarray:
        kernel = extend.builder_for("numpy", type(node.layer))  # the numpy backend's leaves.py table
        assert kernel is not None, type(node.layer)
        return kernel(self.net, node, x, False)  # type: ignore[no-any-return]

    def activation(self, name: str, x: np.ndarray) -> np.ndarray:
        return ops.activation(name, x.astype(np.float32))

    def concat(self, xs: list, axis: int) -> np.ndarray:
        return np.concatenate(xs, axis=axis)

    def channel_axis(self, rank: int) -> int:
        return 1 if self.net.data_format == "channels_first" or rank == 2 else rank - 1


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_run_matches_the_reference_forward(case) -> None:  # type: ignore[no-untyped-def]
    model = di.compile(case.make(), "numpy")
    x = case.data()
    model.apply_init(x, init="xavier_uniform", key=0)
    expected = model.intermediates(x)
    record: dict = {}
    y = run(model.root, x, NumpyRunner(model.native), record)
    assert set(record) == set(expected)
    for path, value in expected.items():
        np.testing.assert_array_equal(record[path], value, err_msg=path)
    np.testing.assert_array_equal(y, model.to_numpy(model(x)))


def test_run_records_shapes_with_a_shape_only_runner() -> None:
    case = BY_ID["lenet"]
    model = di.compile(case.make(), "numpy")
    model.apply_init(case.data(), key=0)

    class Shapes(NumpyRunner):
        def record(self, y: np.ndarray) -> tuple:
            return tuple(y.shape)

    record: dict = {}
    run(model.root, case.data(), Shapes(model.native), record)
    assert record == {p: info.output_shape for p, info in di.infer_shapes(case.make(), case.shape).layers.items()}
