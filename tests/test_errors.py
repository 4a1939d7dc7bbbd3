"""One error contract on every backend: the same DeferInitError subclass for the same mistake, a message
naming where, what was expected and what was received, and nothing lost when it happens."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

import numpy as np
import pytest

import deferinit as di
from cases import BY_ID

LENET = BY_ID["lenet"]


@pytest.fixture
def lenet(backend: str) -> di.CompiledModel:
    model = di.compile(LENET.make(), backend)
    model.apply_init(LENET.data(), init="xavier_uniform", key=0)
    return model


BAD_CALLS = [
    ("wrong rank", np.zeros((2, 28, 28), np.float32), di.ShapeMismatchError, r"layer '0' \(Conv2D\) expected a rank-4"),
    ("wrong channels", np.zeros((2, 3, 28, 28), np.float32), di.ShapeMismatchError,
     r"layer '0' \(Conv2D\) expected 1 input channels per group, as when initialized \(parameter '0.weight' is "
     r"\(6, 1, 5, 5\)\), received 3 \(input shape \(2, 3, 28, 28\)\)"),
    ("smaller than a kernel", np.zeros((2, 1, 8, 8), np.float32), di.ShapeMismatchError,
     r"layer '2' \(Conv2D\) expected spatial size >= 5"),
    ("other spatial size", np.zeros((2, 1, 32, 32), np.float32), di.ShapeMismatchError, r"layer '5' \(Dense\)"),
    ("empty batch", np.zeros((0, 1, 28, 28), np.float32), di.ShapeMismatchError, r"empty batch"),
    ("integers", np.zeros((2, 1, 28, 28), np.int32), di.DTypeError, r"layer '0' \(Conv2D\) expected floating-point"),
    ("complex", np.zeros((2, 1, 28, 28), np.complex64), di.DTypeError, r"received dtype complex64"),
    ("bool", np.zeros((2, 1, 28, 28), bool), di.DTypeError, r"received dtype bool"),
    ("not an array", "data", di.DTypeError, r"expected a numpy array or a"),
    ("objects", [object()], di.DTypeError, r"objects"),
]


@pytest.mark.parametrize("what,x,error,match", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_calls(lenet: di.CompiledModel, what: str, x, error: type, match: str) -> None:  # type: ignore[no-untyped-def]
    before = lenet.export_weights()
    with pytest.raises(error, match=match):
        lenet(x)
    after = lenet.export_weights()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert lenet.to_numpy(lenet(LENET.data())).shape == (2, 10)  # still works


# wrong channels or another spatial size are no mistake before initialization: those dims are inferred
BAD_INITS = [c for c in BAD_CALLS if c[0] not in ("wrong channels", "other spatial size")]


@pytest.mark.parametrize("what,x,error,match", BAD_INITS, ids=[c[0] for c in BAD_INITS])
def test_bad_apply_init_leaves_model_uninitialized(backend: str, what: str, x, error: type, match: str) -> None:  # type: ignore[no-untyped-def]
    model = di.compile(LENET.make(), backend)
    with pytest.raises(error, match=match):
        model.apply_init(x)
    assert not model.initialized
    with pytest.raises(di.NotInitializedError, match="apply_init"):
        model.export_weights()
    assert model.apply_init(LENET.data()).output_shape == (2, 10)  # a retry with good input works


def test_failed_load_weights_changes_nothing(lenet: di.CompiledModel) -> None:
    good = lenet.export_weights()
    cases = [
        ({k: v for k, v in good.items() if k != "5.bias"}, di.WeightsError, r"missing '5.bias' \(120,\)"),
        ({**good, "9.weight": np.zeros(3)}, di.WeightsError, r"unexpected '9.weight'"),
        ({**good, "2.weight": np.zeros((16, 6, 3, 3))}, di.ShapeMismatchError,
         r"parameter '2.weight' expected shape \(16, 6, 5, 5\), received \(16, 6, 3, 3\)"),
        ({**good, "0.bias": np.array([np.nan] * 6)}, di.WeightsError, r"'0.bias' expected finite values"),
        ({**good, "0.bias": np.zeros(6, complex)}, di.DTypeError, r"'0.bias' expected real numbers"),
        ([1, 2], di.WeightsError, r"expected a mapping"),
    ]
    poisoned = {k: v + 1.0 for k, v in good.items()}
    poisoned["7.bias"] = np.zeros((3,), np.float32)  # a wrong shape late in the dict: nothing before it may land
    cases.append((poisoned, di.ShapeMismatchError, r"'7.bias'"))
    for weights, error, match in cases:
        with pytest.raises(error, match=match):
            lenet.load_weights(weights)
        now = lenet.export_weights()
        assert all(np.array_equal(now[k], good[k]) for k in good), match


def test_weight_files(lenet: di.CompiledModel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    weights = lenet.export_weights()
    for suffix in (".npz", ".safetensors"):
        path = di.save_weights(tmp_path / f"w{suffix}", weights)
        assert lenet.load_weights(path).output_shape == (2, 10)
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
        with pytest.raises(di.WeightsError, match=re.escape(str(path))):
            lenet.load_weights(di.load_weights(path))
    text = tmp_path / "notes.npz"
    text.write_text("these are not weights")
    with pytest.raises(di.WeightsError, match="notes.npz"):
        di.load_weights(text)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, w=np.array([{"a": 1}], dtype=object))
    with pytest.raises(di.WeightsError, match="without pickle"):
        di.load_weights(pickled)
    renamed = tmp_path / "renamed.safetensors"
    di.save_weights(renamed, {k.replace("weight", "kernel"): v for k, v in weights.items()})
    with pytest.raises(di.WeightsError, match="missing '0.weight'"):
        lenet.load_weights(renamed)


def test_not_initialized_everywhere(backend: str) -> None:
    model = di.compile(LENET.make(), backend)
    for call in (lambda: model.report, lambda: model(LENET.data()), model.export_weights,
                 lambda: model.gradients(LENET.data()), lambda: model.intermediates(LENET.data())):
        with pytest.raises(di.NotInitializedError):
            call()


def test_unknown_init_and_key(backend: str) -> None:
    model = di.compile(LENET.make(), backend)
    with pytest.raises(di.SpecError, match="init: expected one of 'zeros'"):
        model.apply_init(LENET.data(), init="glorot-ish")
    with pytest.raises(di.DTypeError, match="key: a portable initializer needs an int seed"):
        model.apply_init(LENET.data(), init="normal", key="seven")
    assert not model.initialized


def test_refuses_what_would_not_fit_before_allocating(backend: str) -> None:
    huge = di.LazyModel([di.Dense(1_000_000), di.Dense(1_000_000)])  # 1e12 parameters: 4 TB
    assert di.infer_shapes(huge, (1, 8)).total_params > 10**12
    model = di.compile(huge, backend)
    with pytest.raises(di.ResourceError, match=r"need \d+.* GiB.*nothing was allocated"):
        model.apply_init(np.zeros((1, 8), np.float32))
    assert not model.initialized


def test_same_mistake_same_class_on_every_backend(backend: str) -> None:
    # the classes asserted here are also what the numpy backend raises (the shared contract)
    mlp = di.compile(BY_ID["mlp"].make(), backend)
    mlp.apply_init(np.zeros((2, 20), np.float32))
    with pytest.raises(di.ShapeMismatchError) as info:
        mlp(np.zeros((2, 30), np.float32))
    assert str(info.value) == ("layer '0' (Dense) expected 20 input features, as when initialized (parameter "
                               "'0.weight' is (16, 20)), received 30 (input shape (2, 30))")


def test_threads_give_the_same_results(backend: str) -> None:
    case = BY_ID["residual"]
    spec = case.make()  # one immutable spec shared by every thread
    serial = di.compile(spec, backend)
    serial.apply_init(case.data(), init="xavier_uniform", key=5)
    want = serial.export_weights()
    want_out = serial.to_numpy(serial(case.data(seed=1)))
    results: list = []
    errors: list = []

    def work() -> None:
        try:
            m = di.compile(spec, backend)
            m.apply_init(case.data(), init="xavier_uniform", key=5)
            results.append((m.export_weights(), m.to_numpy(m(case.data(seed=1)))))
        except Exception as exc:  # collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for weights, out in results:
        assert all(np.array_equal(weights[k], want[k]) for k in want)
        np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-6)


def test_deterministic_across_processes(backend: str) -> None:
    code = (
        "import sys, hashlib, numpy as np, deferinit as di; sys.path.insert(0, 'tests'); from cases import BY_ID; "
        "c = BY_ID['residual']; m = di.compile(c.make(), sys.argv[1]); "
        "m.apply_init(c.data(), init=None, key=3); w = m.export_weights(); "
        "print(hashlib.sha256(b''.join(w[k].tobytes() for k in sorted(w))).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code, backend], capture_output=True, text=True,
                              check=True).stdout.split()[-1] for _ in range(2)}
    assert len(digests) == 1  # the framework's own default init, seeded by key, is reproducible


def test_token_ids_out_of_range(backend: str) -> None:
    case = BY_ID["embedding"]
    model = di.compile(case.make(), backend)
    model.apply_init(case.data())
    for bad in (np.full((2, 5), 50, np.int64), np.full((2, 5), -1, np.int64)):
        with pytest.raises(di.ShapeMismatchError, match=r"layer '0' \(Embedding\) expected indices in \[0, 50\)"):
            model(bad)
    assert model.to_numpy(model(np.full((2, 5), 49, np.int64))).shape == (2, 3)


def test_batch_norm_training_needs_more_than_one_value(backend: str) -> None:
    model = di.compile(di.LazyModel([di.Dense(4), di.BatchNorm(), di.Dense(2)]), backend)
    model.apply_init(np.zeros((3, 5), np.float32))
    model(np.zeros((1, 5), np.float32))  # inference with running statistics is fine at batch 1
    with pytest.raises(di.ShapeMismatchError, match=r"layer '1' \(BatchNorm\) expected more than 1 value per channel"):
        model(np.zeros((1, 5), np.float32), training=True)
    assert model.to_numpy(model(np.ones((2, 5), np.float32), training=True)).shape == (2, 2)


def test_a_shape_given_as_data_gets_a_hint(backend: str) -> None:
    # apply_init((2, 20)): numpy reads the tuple as int data of shape (2,); the error says what it took and how
    # to pass a shape, on every backend, and the model stays uninitialized
    model = di.compile(di.LazyModel([di.Dense(3)]), backend)
    with pytest.raises(di.DTypeError, match=r"took the tuple \(2, 20\) as data .*di\.ShapeDtype\(\(2, 20\), 'float32'\)"):
        model.apply_init((2, 20))
    assert not model.initialized
    assert model.apply_init(di.ShapeDtype((2, 20), "float32")).output_shape == (2, 3)
