"""Sharding plans: which canonical parameters are split along which axis over which mesh axis, as data.

A :class:`ShardingPlan` is a tuple of :class:`ShardRule` s, tried in order: the first rule whose glob
``pattern`` matches a parameter's canonical name (``fnmatch``, e.g. ``"*.q_weight"``) and whose ``role`` (if
given: ``kernel``, ``bias``, ``embedding``...) is the parameter's, shards it along ``param_axis`` over the
mesh axis ``mesh_axis``; a parameter no rule matches is replicated on every device. A mesh is a mapping of
axis names to sizes (``{"data": 4}``, ``{"data": 2, "model": 4}``): a parameter sharded over ``"data"`` is
cut into ``mesh["data"]`` equal slices along its axis and replicated over the other mesh axes.

:meth:`ShapeReport.shard <deferinit.report.ShapeReport.shard>` applies a plan to a report's shapes with no
framework and no memory, and raises :class:`~deferinit.errors.SpecError` naming the parameter for a dim that
does not divide, an unknown mesh axis or an axis out of range, before anything is allocated.
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .errors import SpecError, fmt_shape

__all__ = ["ShardRule", "ShardingPlan", "ShardInfo", "ShardedReport", "shard_report"]

FORMAT = "deferinit.sharding_plan"


@dataclass(frozen=True)
class ShardRule:
    """Shard the parameters whose canonical name matches ``pattern`` (and whose role is ``role``, unless None)
    along ``param_axis`` (negative counts from the end) over the mesh axis ``mesh_axis``; ``param_axis=None``
    replicates them (to exempt some names from a later, broader rule)."""

    pattern: str = "*"
    param_axis: int | None = 0
    mesh_axis: str = "data"
    role: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.pattern, str) or not self.pattern:
            raise SpecError(f"ShardRule: expected pattern to be a non-empty glob string, received {self.pattern!r}")
        if isinstance(self.param_axis, bool) or not isinstance(self.param_axis, (int, type(None))):
            raise SpecError(f"ShardRule {self.pattern!r}: expected param_axis to be an int or None, received "
                            f"{self.param_axis!r}")
        if not isinstance(self.mesh_axis, str) or not self.mesh_axis:
            raise SpecError(f"ShardRule {self.pattern!r}: expected mesh_axis to be a non-empty string, "
                            f"received {self.mesh_axis!r}")
        if self.role is not None and not isinstance(self.role, str):
            raise SpecError(f"ShardRule {self.pattern!r}: expected role to be a string or None, received {self.role!r}")

    def matches(self, name: str, role: str | None) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern) and (self.role is None or self.role == role)

    def to_dict(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "param_axis": self.param_axis, "mesh_axis": self.mesh_axis, "role": self.role}


@dataclass(frozen=True)
class ShardingPlan:
    """Rules tried in order (the first match wins); unmatched parameters are replicated."""

    rules: tuple[ShardRule, ...] = ()

    def __post_init__(self) -> None:
        rules = tuple(self.rules)
        bad = [r for r in rules if not isinstance(r, ShardRule)]
        if bad:
            raise SpecError(f"ShardingPlan: expected ShardRule objects, received {bad[0]!r}")
        object.__setattr__(self, "rules", rules)

    @classmethod
    def fsdp(cls, axis: str = "data", roles: Sequence[str] = ("kernel", "embedding")) -> "ShardingPlan":
        """FSDP-style: every weight (roles ``kernel`` and ``embedding``) cut on dim 0 over ``axis``; biases and
        norm parameters replicated."""
        return cls(tuple(ShardRule("*", 0, axis, role) for role in roles))

    @classmethod
    def tensor_parallel(cls, axis: str = "model") -> "ShardingPlan":
        """Megatron-style for attention: q/k/v projections (weight and bias) cut on their output dim, the
        output projection's weight on its input dim (its bias replicated); every other weight (Dense, Conv:
        ``(out, in, ...)``) and its bias cut on the output dim (column parallel)."""
        rules = [ShardRule(f"*{p}_weight", 0, axis) for p in "qkv"] + [ShardRule(f"*{p}_bias", 0, axis) for p in "qkv"]
        rules += [ShardRule("*out_weight", 1, axis), ShardRule("*out_bias", None),
                  ShardRule("*", 0, axis, "kernel"), ShardRule("*", 0, axis, "bias")]
        return cls(tuple(rules))

    def rule_for(self, name: str, role: str | None) -> ShardRule | None:
        for rule in self.rules:
            if rule.matches(name, role):
                return None if rule.param_axis is None else rule
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": 1, "rules": [r.to_dict() for r in self.rules]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ShardingPlan":
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise SpecError(f"not a deferinit sharding plan: expected a mapping with format={FORMAT!r}, received "
                            f"{type(d).__name__}" + (f" with format={d.get('format')!r}" if isinstance(d, Mapping) else ""))
        rules = d.get("rules")
        if not isinstance(rules, list) or not all(isinstance(r, Mapping) for r in rules):
            raise SpecError(f"sharding plan: expected 'rules' to be a list of mappings, received {rules!r}")
        out = []
        for i, r in enumerate(rules):
            extra = set(r) - {"pattern", "param_axis", "mesh_axis", "role"}
            if extra:
                raise SpecError(f"sharding plan rule {i}: unexpected keys {sorted(extra)}")
            out.append(ShardRule(r.get("pattern", "*"), r.get("param_axis", 0), r.get("mesh_axis", "data"),
                                 r.get("role")))
        return cls(tuple(out))

    @classmethod
    def from_json(cls, text: str) -> "ShardingPlan":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise SpecError(f"sharding plan: expected JSON, received text that fails at line {exc.lineno} "
                            f"column {exc.colno}: {exc.msg}") from None


@dataclass(frozen=True)
class ShardInfo:
    """One parameter under a plan: ``param_axis``/``mesh_axis`` None when replicated; ``shards`` slices."""

    shape: tuple[int, ...]
    local_shape: tuple[int, ...]
    dtype: str = "float32"
    param_axis: int | None = None
    mesh_axis: str | None = None
    shards: int = 1

    @property
    def local_bytes(self) -> int:
        from .report import _itemsize

        return math.prod(self.local_shape) * _itemsize(self.dtype)

    def index(self, shard: int) -> tuple[slice, ...]:
        """The slices of the whole parameter that shard number ``shard`` (0 .. shards-1) holds."""
        if self.param_axis is None:
            return tuple(slice(0, d) for d in self.shape)
        n = self.local_shape[self.param_axis]
        return tuple(slice(shard * n, (shard + 1) * n) if i == self.param_axis else slice(0, d)
                     for i, d in enumerate(self.shape))

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "local_shape": list(self.local_shape), "dtype": self.dtype,
                "param_axis": self.param_axis, "mesh_axis": self.mesh_axis, "shards": self.shards}


@dataclass(frozen=True)
class ShardedReport:
    """A :class:`~deferinit.report.ShapeReport` under a plan and mesh: each parameter's :class:`ShardInfo`.

    ``bytes_per_device``: the parameters one device holds (its shards plus the replicated parameters);
    ``peak_bytes_per_device``: that plus the scratch of drawing one chunk of values (the portable initializers
    draw at most :data:`deferinit.counter.CHUNK` values at once, in float64 temporaries)."""

    report: Any
    plan: ShardingPlan
    mesh_shape: Mapping[str, int]
    params: Mapping[str, ShardInfo] = field(default_factory=dict)

    @property
    def devices(self) -> int:
        return math.prod(self.mesh_shape.values())

    @property
    def total_bytes(self) -> int:
        from .report import _itemsize

        return sum(math.prod(p.shape) * _itemsize(p.dtype) for p in self.params.values())

    @property
    def bytes_per_device(self) -> int:
        return sum(p.local_bytes for p in self.params.values())

    @property
    def peak_bytes_per_device(self) -> int:
        from .counter import CHUNK

        largest = max((math.prod(p.local_shape) for p in self.params.values()), default=0)
        return self.bytes_per_device + SCRATCH_BYTES_PER_VALUE * min(largest, CHUNK)

    def to_dict(self) -> dict[str, Any]:
        return {"mesh_shape": dict(self.mesh_shape), "plan": self.plan.to_dict(),
                "params": {n: p.to_dict() for n, p in self.params.items()}, "total_bytes": self.total_bytes,
                "bytes_per_device": self.bytes_per_device, "peak_bytes_per_device": self.peak_bytes_per_device}

    def table(self) -> str:
        from .report import _fmt_bytes

        rows = [("param", "shape", "sharding", "local shape", "local memory")]
        for name, p in self.params.items():
            how = "replicated" if p.param_axis is None else f"dim {p.param_axis} over '{p.mesh_axis}' ({p.shards})"
            rows.append((name, fmt_shape(p.shape), how, fmt_shape(p.local_shape), _fmt_bytes(p.local_bytes)))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        mesh = ", ".join(f"{k}={v}" for k, v in self.mesh_shape.items())
        lines.append(f"Mesh: {mesh} ({self.devices} devices); params {_fmt_bytes(self.total_bytes)} in all, "
                     f"{_fmt_bytes(self.bytes_per_device)} per device (peak {_fmt_bytes(self.peak_bytes_per_device)})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


#: bytes of temporaries per value drawn at once (Box-Muller: the lanes, two uniforms, the radius, cos, sin and
#: the interleaved pair): 60.5 measured with tracemalloc for a normal draw; tests/core/test_counter_init.py checks the bound
SCRATCH_BYTES_PER_VALUE = 64


def check_mesh(mesh_shape: Any) -> dict[str, int]:
    if not isinstance(mesh_shape, Mapping) or not mesh_shape:
        raise SpecError(f"mesh_shape: expected a non-empty mapping of axis names to sizes like {{'data': 4}}, "
                        f"received {mesh_shape!r}")
    for k, v in mesh_shape.items():
        if not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SpecError(f"mesh_shape: expected axis names (str) mapped to positive ints, received {k!r}: {v!r}")
    return dict(mesh_shape)


def shard_report(report: Any, plan: ShardingPlan, mesh_shape: Mapping[str, int],
                 roles: Mapping[str, str] | None = None) -> ShardedReport:
    """Apply ``plan`` over ``mesh_shape`` to ``report``'s parameters (see the module docstring)."""
    if not isinstance(plan, ShardingPlan):
        raise SpecError(f"shard: expected a deferinit ShardingPlan, received {type(plan).__name__}")
    mesh = check_mesh(mesh_shape)
    roles = dict(getattr(report, "roles", {}) if roles is None else roles)
    if not roles and any(r.role is not None for r in plan.rules) and report.params:
        raise SpecError("shard: the plan has rules by role but this report carries no parameter roles (a report "
                        "read back from JSON); use the report from infer_shapes or apply_init")
    out = {}
    for name, p in report.params.items():
        rule = plan.rule_for(name, roles.get(name))
        if rule is None:
            out[name] = ShardInfo(tuple(p.shape), tuple(p.shape), p.dtype)
            continue
        rank = len(p.shape)
        assert rule.param_axis is not None
        axis = rule.param_axis + rank if rule.param_axis < 0 else rule.param_axis
        if not 0 <= axis < rank:
            raise SpecError(f"shard: parameter '{name}' {fmt_shape(p.shape)}: rule {rule.pattern!r} expected "
                            f"param_axis in [{-rank}, {rank}), received {rule.param_axis}")
        if rule.mesh_axis not in mesh:
            raise SpecError(f"shard: parameter '{name}': rule {rule.pattern!r} expected mesh axis "
                            f"{rule.mesh_axis!r} to be one of {sorted(mesh)}, received a mesh {mesh}")
        n = mesh[rule.mesh_axis]
        if p.shape[axis] % n:
            raise SpecError(f"shard: parameter '{name}' {fmt_shape(p.shape)}: expected dim {axis} to divide "
                            f"into {n} equal shards over mesh axis {rule.mesh_axis!r}, received size "
                            f"{p.shape[axis]} ({p.shape[axis]} % {n} = {p.shape[axis] % n})")
        local = tuple(d // n if i == axis else d for i, d in enumerate(p.shape))
        out[name] = ShardInfo(tuple(p.shape), local, p.dtype, axis, rule.mesh_axis, n)
    return ShardedReport(report, plan, mesh, out)
