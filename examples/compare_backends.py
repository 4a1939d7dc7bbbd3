"""Run one spec on every installed backend and print the reports side by side.

    python examples/compare_backends.py examples/zoo/lenet.json --input 1,1,28,28
    python examples/compare_backends.py examples/zoo/gru_lm.json --input 2,35 --dtype int64

Each backend's framework infers the shapes with its own deferred initialization; the last column says
whether its report equals the framework-free reference's.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import deferinit as di  # noqa: E402
from deferinit.cli import parse_shape, resolve_spec  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--input", required=True)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    spec = resolve_spec(args.spec)
    shape = parse_shape(args.input)
    reference = di.infer_shapes(spec, shape, dtype=args.dtype)
    reports = {"reference": reference}
    for backend in di.available_backends():
        if backend == "numpy":
            continue
        try:
            model = di.compile(spec, backend)
            reports[backend] = model.apply_init(np.zeros(shape, args.dtype), init="zeros")
        except di.DeferInitError as exc:
            print(f"{backend}: {type(exc).__name__}: {exc}", file=sys.stderr)
    names = list(reports)
    rows = [["parameter", "canonical shape"] + [f"{n} native" for n in names[1:]]]
    for pname, info in reference.params.items():
        row = [pname, str(info.shape)]
        for n in names[1:]:
            p = reports[n].params[pname]
            row.append(f"{p.native_name} {tuple(p.native_shape)}" + (" [ref]" if p.source == "reference" else ""))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print()
    for n, rep in reports.items():
        same = "same as reference" if not rep.diff(reference) else "DIFFERS: " + "; ".join(rep.diff(reference))
        print(f"{n:12s} output {rep.output_shape}  params {rep.total_params:,}  {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
