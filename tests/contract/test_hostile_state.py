"""A compiled model's state under stress: threads sharing one model, failures part-way through writing weights or
materializing, initializers that return the wrong thing, weights for another input, and weight values from any
framework. The contract: a call sees entirely the old or entirely the new weights, an inference call never runs
in training mode, and after an error nothing is left half-done.
"""

from __future__ import annotations

import importlib
import threading
import time
from typing import Any, Callable

import numpy as np
import pytest

import deferinit as di

X = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)


def dropout_mlp() -> di.LazyModel:
    """Dropout in training mode changes the output; no BatchNorm, so a training call changes no weight."""
    return di.LazyModel([di.Dense(32, activation="relu"), di.Dropout(0.5), di.Dense(4)])


def two_dense() -> di.LazyModel:
    return di.LazyModel([di.Dense(5, activation="relu"), di.Dense(3)])


def reference_output(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The dropout MLP in inference mode, by hand."""
    h = np.maximum(x @ weights["0.weight"].T + weights["0.bias"], 0)
    return h @ weights["2.weight"].T + weights["2.bias"]


def fresh_weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = {"0.weight": (32, 6), "0.bias": (32,), "2.weight": (4, 32), "2.bias": (4,)}
    return {n: rng.uniform(-0.5, 0.5, s).astype(np.float32) for n, s in shapes.items()}


def run_threads(targets: list[Callable[[], None]], seconds: float) -> None:
    """Run every target in its own thread until ``seconds`` have passed; a thread that has not finished 60 s
    later (a deadlock) fails the test instead of hanging it."""
    errors: list[BaseException] = []

    def guard(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # re-raised in the test's thread
                errors.append(exc)
        return run
    threads = [threading.Thread(target=guard(t), daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    assert not any(t.is_alive() for t in threads), "a thread is still running: deadlock"
    if errors:
        raise errors[0]


# ============================================================================================ threads
@pytest.mark.parametrize("writer", ["train", "load"])
def test_inference_threads_beside_training_and_loading(backend: str, writer: str) -> None:
    """Two threads call the model in inference mode while a third alternately trains it (training=True: dropout)
    or loads one of two weight sets. Every inference output is exactly one of the two known full-weight results,
    computed by hand: a mixed weight set or a dropout mask would give neither."""
    old, new = fresh_weights(0), fresh_weights(1)
    model = di.compile(dropout_mlp(), backend)
    model.load_weights(old, input_shape=X.shape)
    want = [reference_output(old, X), reference_output(new, X)]
    model(X)  # both modes compiled first (jax/nnx jit each on first use; seconds on a loaded machine): the test
    model(X, training=True)  # is about interleaving calls, and a first compile could eat its whole time window
    stop = time.monotonic() + 1.5
    calls, writes, bad = [0, 0], [0], []

    def infer(i: int) -> Callable[[], None]:
        def run() -> None:
            while time.monotonic() < stop:
                y = model.to_numpy(model(X))
                calls[i] += 1
                if not any(np.allclose(y, w, rtol=1e-4, atol=1e-5) for w in want):
                    bad.append(y)
        return run

    def write() -> None:
        while time.monotonic() < stop:
            if writer == "train":
                model(X, training=True)
            else:
                model.load_weights(new if writes[0] % 2 else old)
            writes[0] += 1
            time.sleep(0)

    run_threads([infer(0), infer(1), write], seconds=1.5)
    assert min(calls) > 0 and writes[0] > 1, (calls, writes)
    assert not bad, f"{len(bad)} of {sum(calls)} inference calls saw neither weight set in inference mode"
    final = model.export_weights()
    assert any(all(np.array_equal(final[k], w[k]) for k in w) for w in (old, new))


def blocking_forward(model: di.CompiledModel, done: dict[str, float]) -> tuple[threading.Event, threading.Event]:
    """Make the model's next inference forward wait inside the framework call until ``release`` is set; the time
    its framework call returned is ``done["first"]``."""
    entered, release = threading.Event(), threading.Event()
    forward = model._forward

    def slow(x: Any, training: bool) -> Any:
        if entered.is_set():
            return forward(x, training)
        entered.set()
        assert release.wait(30)
        y = forward(x, training)
        done["first"] = time.monotonic()
        return y
    model._forward = slow  # type: ignore[method-assign]
    return entered, release


def test_calls_run_side_by_side_and_writers_wait(backend: str) -> None:
    """While one inference call is inside the framework, another completes (no lock between calls), and
    load_weights and a training call both wait for it to finish."""
    old, new = fresh_weights(0), fresh_weights(1)
    model = di.compile(dropout_mlp(), backend)
    model.load_weights(old, input_shape=X.shape)
    done: dict[str, float] = {}
    entered, release = blocking_forward(model, done)

    def first() -> None:
        model(X)

    def loader() -> None:
        model.load_weights(new)
        done["load"] = time.monotonic()

    def trainer() -> None:
        model(X, training=True)
        done["train"] = time.monotonic()

    t_first = threading.Thread(target=first, daemon=True)
    t_first.start()
    assert entered.wait(30)
    second = model.to_numpy(model(X))  # completes while the first call is still blocked
    np.testing.assert_allclose(second, reference_output(old, X), rtol=1e-4, atol=1e-5)
    writers = [threading.Thread(target=f, daemon=True) for f in (loader, trainer)]
    for t in writers:
        t.start()
    time.sleep(0.3)
    assert "load" not in done and "train" not in done, "a writer ran beside an inference call"
    release.set()
    for t in (t_first, *writers):
        t.join(30)
    assert done["first"] <= min(done["load"], done["train"])
    np.testing.assert_allclose(model.to_numpy(model(X)), reference_output(new, X), rtol=1e-4, atol=1e-5)


def test_inference_after_training_is_inference(backend: str) -> None:
    """A training call leaves the model to the next inference call in inference mode (torch keeps the mode on
    the module: it is switched back under the gate, not by each call)."""
    w = fresh_weights(0)
    model = di.compile(dropout_mlp(), backend)
    model.load_weights(w, input_shape=X.shape)
    trained = model.to_numpy(model(X, training=True))
    assert not np.allclose(trained, reference_output(w, X), atol=1e-4)  # dropout ran
    np.testing.assert_allclose(model.to_numpy(model(X)), reference_output(w, X), rtol=1e-4, atol=1e-5)
    if backend == "torch":
        assert not model.native.training


# ============================================================================================ load_weights
def flaky_write(backend: str, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make the backend's own per-tensor write raise on its second tensor (once); returns the call counter."""
    count = [0]

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        def flaky(*args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            if count[0] == 2:
                raise RuntimeError("injected failure on the second tensor")
            return fn(*args, **kwargs)
        return flaky

    if backend == "torch":
        import torch

        monkeypatch.setattr(torch.Tensor, "copy_", wrap(torch.Tensor.copy_))
    elif backend == "tensorflow":
        import keras

        cls = type(keras.Variable(np.zeros(1, np.float32)))
        monkeypatch.setattr(cls, "assign", wrap(cls.assign))
    elif backend == "mxnet":
        from mxnet import gluon

        monkeypatch.setattr(gluon.Parameter, "initialize", wrap(gluon.Parameter.initialize))
    elif backend == "jax":
        from deferinit.adapters.jax import params as _jax_tree

        monkeypatch.setattr(_jax_tree, "put", wrap(_jax_tree.put))
    elif backend == "nnx":  # deferinit writes an NNX variable's value with set_value (a shape-only one has no [...])
        from flax import nnx

        monkeypatch.setattr(nnx.Variable, "set_value", wrap(nnx.Variable.set_value))
    elif backend == "numpy":
        from deferinit.adapters import numpy as adapter

        class FlakyNumpy:  # the adapter's `np`, with a flaky np.array (its per-tensor copy)
            array = staticmethod(wrap(np.array))

            def __getattr__(self, name: str) -> Any:
                return getattr(np, name)
        monkeypatch.setattr(adapter, "np", FlakyNumpy())
    else:
        pytest.fail(f"no per-tensor write known for backend {backend}")
    return count


def test_load_weights_failing_part_way_changes_nothing(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    old, new = fresh_weights(0), fresh_weights(1)
    model = di.compile(dropout_mlp(), backend)
    model.load_weights(old, input_shape=X.shape)
    count = flaky_write(backend, monkeypatch)
    with pytest.raises(di.DeferInitError):
        model.load_weights(new)
    assert count[0] >= 2  # the failure happened part-way, after a first tensor was written
    monkeypatch.undo()
    after = model.export_weights()
    for name, value in old.items():
        assert np.array_equal(after[name], value), f"'{name}' changed by a failed load_weights"
    np.testing.assert_allclose(model.to_numpy(model(X)), reference_output(old, X), rtol=1e-4, atol=1e-5)
    model.load_weights(new)  # and the model still takes weights
    np.testing.assert_allclose(model.to_numpy(model(X)), reference_output(new, X), rtol=1e-4, atol=1e-5)


def test_load_weights_on_abstract_model_keeps_the_found_shapes(backend: str) -> None:
    """Weights made for another input size do not silently re-shape an abstractly initialized model."""
    model = di.compile(two_dense(), backend)
    model.apply_init(di.ShapeDtype((2, 20)), abstract=True)
    other = di.infer_shapes(two_dense(), (2, 30)).params
    wrong = {n: np.ones(p.shape, np.float32) for n, p in other.items()}
    with pytest.raises(di.ShapeMismatchError, match=r"parameter '0.weight' expected shape \(5, 20\), received \(5, 30\)"):
        model.load_weights(wrong)
    with pytest.raises(di.ShapeMismatchError, match=r"'0.weight' to be \(5, 30\).*abstractly with input shape \(2, 20\)"):
        model.load_weights(wrong, input_shape=(2, 30))
    assert model.report.input_shape == (2, 20) and model.report.params["0.weight"].shape == (5, 20)
    with pytest.raises(di.NotInitializedError):  # still abstract
        model(np.zeros((2, 20), np.float32))
    rng = np.random.default_rng(3)
    right = {n: rng.standard_normal(p.shape).astype(np.float32)
             for n, p in di.infer_shapes(two_dense(), (2, 20)).params.items()}
    model.load_weights(right)
    x = rng.standard_normal((2, 20)).astype(np.float32)
    want = np.maximum(x @ right["0.weight"].T + right["0.bias"], 0) @ right["1.weight"].T + right["1.bias"]
    np.testing.assert_allclose(model.to_numpy(model(x)), want, rtol=1e-4, atol=1e-5)


# ============================================================================================ weight values
def _torch_values(kind: str, w: dict[str, np.ndarray]) -> tuple[dict, dict | None]:
    import torch
    if kind == "parameter":
        return {n: torch.nn.Parameter(torch.from_numpy(v.copy())) for n, v in w.items()}, w
    if kind == "bfloat16":
        vals = {n: torch.from_numpy(v.copy()).bfloat16() for n, v in w.items()}
        return vals, {n: t.float().numpy() for n, t in vals.items()}
    return {n: (torch.empty(v.shape, device="meta") if n == "1.weight" else v) for n, v in w.items()}, None


def _tensorflow_values(kind: str, w: dict[str, np.ndarray]) -> tuple[dict, dict | None]:
    import keras
    import tensorflow as tf
    if kind == "bfloat16":
        vals = {n: tf.cast(tf.constant(v), tf.bfloat16) for n, v in w.items()}
        return vals, {n: tf.cast(t, tf.float32).numpy() for n, t in vals.items()}
    if kind == "variable":
        return {n: keras.Variable(v) for n, v in w.items()}, w
    with keras.StatelessScope(initialize_variables=False):  # a variable with a shape and no value
        ghost = keras.Variable(initializer="ones", shape=w["1.weight"].shape)
    return {**w, "1.weight": ghost}, None


def _jax_values(kind: str, w: dict[str, np.ndarray]) -> tuple[dict, dict | None]:
    import jax
    if kind == "bfloat16":
        vals = {n: jax.numpy.asarray(v, jax.numpy.bfloat16) for n, v in w.items()}
        return vals, {n: np.asarray(t.astype(jax.numpy.float32)) for n, t in vals.items()}
    return {**w, "1.weight": jax.ShapeDtypeStruct(w["1.weight"].shape, jax.numpy.float32)}, None


def _nnx_values(kind: str, w: dict[str, np.ndarray]) -> tuple[dict, dict | None]:
    """nnx.Param variables, as ``nnx.state`` holds them; one holding only a shape (from ``nnx.eval_shape``)."""
    import jax
    from flax import nnx
    if kind == "param":
        return {n: nnx.Param(jax.numpy.asarray(v)) for n, v in w.items()}, w
    return {**w, "1.weight": nnx.Param(jax.ShapeDtypeStruct(w["1.weight"].shape, jax.numpy.float32))}, None


def _mxnet_values(kind: str, w: dict[str, np.ndarray]) -> tuple[dict, dict | None]:
    import mxnet as mx
    return {n: mx.nd.array(v) for n, v in w.items()}, w


def _numpy_values(kind: str, w: dict[str, np.ndarray]) -> tuple[dict, dict | None]:
    if kind == "float64":  # widened values load as float32, exactly as numpy rounds them
        vals = {n: v.astype(np.float64) for n, v in w.items()}
        return vals, {n: v.astype(np.float32) for n, v in vals.items()}
    return {n: v.tolist() for n, v in w.items()}, w  # nested lists


VALUES = [("numpy", "float64"), ("numpy", "lists"), ("torch", "parameter"), ("torch", "bfloat16"), ("torch", "meta"),
          ("tensorflow", "bfloat16"), ("tensorflow", "variable"), ("tensorflow", "uninitialized"), ("jax", "bfloat16"),
          ("jax", "shape_only"), ("nnx", "param"), ("nnx", "shape_only"), ("mxnet", "ndarray")]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each framework's tensor kinds in the runs that select it (its framework is then importable, or the run
    failed at start-up): no skip stands in for a framework that is missing."""
    if "framework_kind" in metafunc.fixturenames:
        from conftest import _selected

        kinds = [v for v in VALUES if v[0] in _selected(metafunc.config)]
        metafunc.parametrize("framework_kind", kinds, ids=[f"{f}-{k}" for f, k in kinds])


def test_weights_as_tensors_of_any_framework(backend: str, framework_kind: tuple[str, str]) -> None:
    """Real-valued tensors of any installed framework load exactly (bfloat16 widened to float32 as the framework
    itself widens it); values with no data are a WeightsError naming the parameter; never a raw error."""
    framework, kind = framework_kind
    model = di.compile(two_dense(), backend)
    model.apply_init(np.zeros((2, 4), np.float32), init="xavier_uniform", key=0)
    before = model.export_weights()
    rng = np.random.default_rng(5)
    w = {n: rng.standard_normal(v.shape).astype(np.float32) for n, v in before.items()}
    values, want = globals()[f"_{framework}_values"](kind, w)
    if want is None:
        with pytest.raises(di.WeightsError, match=r"parameter '1.weight' .*no data; nothing was changed"):
            model.load_weights(values)
        want = before
    else:
        model.load_weights(values)
    got = model.export_weights()
    for name in want:
        assert np.array_equal(got[name], want[name]), name


# ============================================================================================ materialize
def native_init(backend: str, fault: str) -> Any:
    """The backend's own kind of initializer, faulty on '1.weight' (the (3, 5) kernel) or, for "shape" and
    "dtype", on '0.weight' (the (5, 4) kernel): "raise" raises, "shape" gives (3,), "dtype" complex values."""
    if backend == "numpy":
        def numpy_init(name: str, shape: tuple) -> np.ndarray:
            if fault == "raise" and name == "1.weight":
                raise RuntimeError("initializer failed")
            if name == "0.weight" and fault == "shape":
                return np.ones(3)
            return np.ones(shape) * (1j if fault == "dtype" and name == "0.weight" else 1)
        return numpy_init
    if backend == "torch":
        import torch

        def torch_init(m: Any) -> None:
            if not isinstance(m, torch.nn.Linear):
                return
            if fault == "raise" and m.out_features == 3:
                raise RuntimeError("initializer failed")
            if m.out_features == 5 and fault == "shape":
                m.weight = torch.nn.Parameter(torch.ones(3))
            elif m.out_features == 5 and fault == "dtype":
                m.weight = torch.nn.Parameter(torch.ones(5, 4, dtype=torch.complex64))
        return torch_init
    if backend in ("jax", "nnx"):  # nnx takes Flax/JAX initializers too
        import jax.numpy as jnp

        def jax_init(key: Any, shape: tuple, dtype: Any = jnp.float32) -> Any:
            if fault == "raise" and tuple(shape) == (5, 3):
                raise RuntimeError("initializer failed")
            if tuple(shape) == (4, 5) and fault == "shape":
                return jnp.ones(3, dtype)
            return jnp.ones(shape, jnp.complex64 if fault == "dtype" and tuple(shape) == (4, 5) else dtype)
        return jax_init
    if backend == "tensorflow":
        import tensorflow as tf

        def tf_init(shape: Any, dtype: Any = None) -> Any:
            if fault == "raise" and tuple(shape) == (5, 3):
                raise RuntimeError("initializer failed")
            if tuple(shape) == (4, 5) and fault == "shape":
                return tf.ones(3)
            return tf.ones(shape, tf.complex64 if fault == "dtype" and tuple(shape) == (4, 5) else tf.float32)
        return tf_init
    if backend == "mxnet":
        import mxnet as mx

        class Faulty(mx.init.Initializer):
            def _init_weight(self, name: str, arr: Any) -> None:
                if fault == "raise" and arr.shape == (3, 5):
                    raise RuntimeError("initializer failed")
                arr[:] = mx.nd.ones((3,)) if arr.shape == (5, 4) and fault == "shape" else 1
        return Faulty()
    pytest.fail(f"no native initializer known for backend {backend}")


def native_key(backend: str) -> Any:
    if backend == "torch":
        import torch

        return torch.Generator().manual_seed(0)
    if backend in ("jax", "nnx"):
        import jax

        return jax.random.PRNGKey(0)
    return "seven"


def assert_abstract(model: di.CompiledModel, backend: str) -> None:
    with pytest.raises(di.NotInitializedError):
        model(np.zeros((2, 4), np.float32))
    with pytest.raises(di.NotInitializedError):
        model.export_weights()
    if backend == "torch":  # still shapes only: nothing allocated
        assert all(t.is_meta for t in (*model.native.parameters(), *model.native.buffers()))


def materialized(backend: str, key: int) -> dict[str, np.ndarray]:
    """What materialize(key=key) gives an abstract model that never failed."""
    model = di.compile(two_dense(), backend)
    model.apply_init(di.ShapeDtype((2, 4)), abstract=True)
    model.materialize(key=key)
    return model.export_weights()


@pytest.mark.parametrize("how", ["bad key", "initializer raises", "wrong shape"])
def test_failed_materialize_leaves_the_model_abstract(backend: str, how: str) -> None:
    model = di.compile(two_dense(), backend)
    report = model.apply_init(di.ShapeDtype((2, 4)), abstract=True)
    if how == "bad key":  # a key the framework takes but a portable initializer does not (it needs an int seed)
        with pytest.raises(di.DTypeError, match="key"):
            model.materialize(init="xavier_uniform", key=native_key(backend))
    elif how == "initializer raises":
        with pytest.raises(di.DeferInitError):
            model.materialize(init=native_init(backend, "raise"), key=1)
    else:
        with pytest.raises(di.ShapeMismatchError, match=r"parameter '0.weight' values of shape \(3,\)|"
                                                        r"parameter '0.weight' .*do not fit its shape"):
            model.materialize(init=native_init(backend, "shape"), key=1)
    assert model.report == report
    assert_abstract(model, backend)
    model.materialize(key=2)  # usable again: the same values as a model that never failed
    got, want = model.export_weights(), materialized(backend, 2)
    assert all(np.array_equal(got[n], want[n]) for n in want)


@pytest.mark.parametrize("fault", ["shape", "dtype"])
def test_native_initializer_of_the_wrong_shape_or_dtype_is_refused(backend: str, fault: str) -> None:
    if fault == "dtype" and backend == "mxnet":
        # Gluon initializers write into the parameter's own float32 array: they return nothing to check
        mx = importlib.import_module("mxnet")
        arr = mx.nd.zeros((2,))
        native_init(backend, "dtype")._init_weight("w", arr)
        assert arr.dtype == np.float32
        return
    error = di.ShapeMismatchError if fault == "shape" else di.DTypeError
    match = r"parameter '0.weight' (values of shape \(3,\)|.*do not fit its shape)" if fault == "shape" else \
        r"parameter '0.weight' values of dtype complex(64|128), expected real numbers"
    model = di.compile(two_dense(), backend)
    with pytest.raises(error, match=match):
        model.apply_init(np.zeros((2, 4), np.float32), init=native_init(backend, fault))
    assert not model.initialized
    model.apply_init(di.ShapeDtype((2, 4)), abstract=True)
    with pytest.raises(error, match=match):
        model.materialize(init=native_init(backend, fault))
    assert_abstract(model, backend)
