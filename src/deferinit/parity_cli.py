"""``deferinit parity``: produce artifacts in each virtualenv, then compare them anywhere.

    deferinit parity run SPEC --backend numpy --input 2,1,28,28 --out art/lenet-numpy.npz
    deferinit parity run SPEC --backend mxnet --from art/lenet-numpy.npz --out art/lenet-mxnet.npz
    deferinit parity compare art/lenet-*.npz            # exit 1 when any backend disagrees
    deferinit parity check SPEC --input 2,20 --backends torch,jax   # all in this process
    deferinit parity check GRAPH_SPEC --input 2,12 --input 2 --backends torch   # a graph spec: one per input
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def _run(args: argparse.Namespace) -> int:
    from .cli import spec_from_args
    from .parity import load_artifact, make_artifact, save_artifact

    if args.source is None and args.input is None:
        args.parser.error("expected --input SHAPE or --from REFERENCE.npz")
    spec = spec_from_args(args)
    source = load_artifact(args.source) if args.source else None
    art = make_artifact(spec, args.backend, input_shape=_shapes(args, spec) if args.input else None,
                        seed=args.seed, dtype=args.dtype, init=args.init, key=args.key, source=source,
                        training=not args.no_training)
    save_artifact(art, args.out)
    outs = art.output if isinstance(art.output, tuple) else (art.output,)
    print(f"{art.backend}: wrote {args.out} (output {', '.join(str(tuple(o.shape)) for o in outs)}, "
          f"{len(art.init)} parameters)")
    return 0


def _shapes(args: argparse.Namespace, spec: Any) -> Any:
    """``--input`` given once per input: one shape for a list spec, a list of them for a graph spec (in the order
    of its ``inputs=``)."""
    names = spec.input_names() if hasattr(spec, "input_names") else None
    if names is None:
        if len(args.input) != 1:
            args.parser.error(f"expected one --input SHAPE for a list spec, received {len(args.input)}")
        return args.input[0]
    if len(args.input) != len(names):
        args.parser.error(f"expected one --input SHAPE per input of the graph spec ({len(names)}: "
                          f"{', '.join(names)}, in that order), received {len(args.input)}")
    return list(args.input)


def _report(result: Any, as_json: bool) -> int:
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result)
        for line in result.failures():
            print("FAIL " + line, file=sys.stderr)
    return 0 if result.passed else 1


def _compare(args: argparse.Namespace) -> int:
    from .parity import compare_artifacts

    return _report(compare_artifacts(args.artifacts, atol=args.atol, rtol=args.rtol), args.json)


def _check(args: argparse.Namespace) -> int:
    from .cli import spec_from_args
    from .parity import parity
    from .parity_artifacts import graph_inputs_for

    spec = spec_from_args(args)
    backends = [b for b in args.backends.split(",") if b] if args.backends else None
    shapes = _shapes(args, spec)
    inputs = graph_inputs_for(spec, shapes) if hasattr(spec, "input_names") else shapes
    result = parity(spec, inputs, backends, key=args.key, init=args.init, atol=args.atol,
                    rtol=args.rtol)
    return _report(result, args.json)


def add_parity_commands(sub: Any) -> None:
    from .cli import add_spec_arguments, shape_arg
    from .parity import DEFAULT_ATOL, DEFAULT_RTOL

    parity = sub.add_parser("parity", help="cross-framework parity checks (in one process or across processes)")
    psub = parity.add_subparsers(dest="parity_command", required=True, metavar="COMMAND")

    def tolerances(p: argparse.ArgumentParser) -> None:
        p.add_argument("--atol", type=float, default=DEFAULT_ATOL)
        p.add_argument("--rtol", type=float, default=DEFAULT_RTOL)
        p.add_argument("--json", action="store_true")

    run = psub.add_parser("run", help="run one backend and write its artifact (.npz)")
    add_spec_arguments(run)
    run.add_argument("--backend", required=True)
    run.add_argument("--input", type=shape_arg, metavar="SHAPE", action="append",
                     help="input shape (drawn from --seed), once per input of a graph spec; or use --from")
    run.add_argument("--from", dest="source", help="reference artifact whose input and weights to use")
    run.add_argument("--out", required=True)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--dtype", default="float32")
    run.add_argument("--init", default="xavier_uniform")
    run.add_argument("--key", type=int, default=0)
    run.add_argument("--no-training", action="store_true", help="skip the training-mode step")
    run.set_defaults(run=_run)

    compare = psub.add_parser("compare", help="compare artifacts from any virtualenvs against the numpy one")
    compare.add_argument("artifacts", nargs="+")
    tolerances(compare)
    compare.set_defaults(run=_compare)

    check = psub.add_parser("check", help="run every given (installed) backend in this process and compare")
    add_spec_arguments(check)
    check.add_argument("--input", required=True, type=shape_arg, metavar="SHAPE", action="append",
                       help="input shape, once per input of a graph spec (in the order of its inputs=)")
    check.add_argument("--backends", default="")
    check.add_argument("--init", default="xavier_uniform")
    check.add_argument("--key", type=int, default=0)
    tolerances(check)
    check.set_defaults(run=_check)
