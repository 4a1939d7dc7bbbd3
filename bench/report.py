"""Merge ``bench/results/<backend>.json`` into ``results.json``, ``results.md`` and ``ratios.png``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from deferinit.registry import REFERENCE, framework_backends  # noqa: E402  (the one list of backend names)

BACKENDS = framework_backends()


def load() -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))
            if p.stem in [REFERENCE, *BACKENDS]}


def markdown(data: dict) -> str:
    lines = []
    ref = data.get("numpy")
    if ref:
        imp = ref["import"]
        lines += ["| reference (framework-free) | value |", "|---|---|",
                  f"| `import deferinit` | {imp['import_ms']:.0f} ms, frameworks imported: "
                  f"{imp['frameworks_imported'] or 'none'} |"]
        for name, r in ref["reference"].items():
            lines.append(f"| `infer_shapes` {name} ({r['params']:.2e} params) | {r['infer_ms']:.2f} ms, "
                         f"peak {r['peak_mb']:.2f} MB |")
        lines.append("")
    have = [b for b in BACKENDS if b in data]
    if have:
        lines += ["| deferinit / native (median ratio; lower is better) | " + " | ".join(have) + " |",
                  "|---|" + "---|" * len(have)]
        rows = [("abstract init 1.6e9 MLP: peak RSS growth (MB)",
                 lambda d: f"{d['abstract_mlp_1.6e9']['deferinit_abstract_peak_rss_mb']:.0f}"),
                ("abstract init 1.6e9 MLP: deferinit / native abstract time",
                 lambda d: f"{d['abstract_mlp_1.6e9']['deferinit_abstract_ms'] / d['abstract_mlp_1.6e9']['native_abstract_ms']:.2f}"),
                ("reference infer_shapes speed-up over native abstract path",
                 lambda d: f"{d['abstract_mlp_1.6e9']['reference_speedup_vs_native_abstract']:.0f}x")]
        cold = "cold_resnet18"  # fresh processes: seconds, not ratios
        rows += [("resnet18 cold: native first init (s)", lambda d: f"{d[cold]['native']['init_s']:.2f}"),
                 ("resnet18 cold: deferinit first init, framework's initializers (s)",
                  lambda d: f"{d[cold]['deferinit_default']['init_s']:.2f}"),
                 ("resnet18 cold: deferinit first init, portable xavier_uniform (s)",
                  lambda d: f"{d[cold]['deferinit_xavier_uniform']['init_s']:.2f}"),
                 ("resnet18 cold: first forward, native / deferinit (s)",
                  lambda d: f"{d[cold]['native']['first_forward_s']:.2f} / "
                            f"{d[cold]['deferinit_default']['first_forward_s']:.2f}")]
        for model in ("mlp", "lenet", "resnet18"):
            rows.append((f"{model}: apply_init / native dry run", lambda d, m=model: f"{d[m]['init_ratio']:.2f}"))
            rows.append((f"{model}: apply_init, first of its spec and input / native dry run",
                         lambda d, m=model: f"{d[m]['init_first_ratio']:.2f}"))
            for key in sorted({k for b in have for k in data[b].get(model, {})
                               if k.startswith("forward_") and k.endswith("_ratio")}):  # a --only zoo run has none
                batch = key.split("_")[1][1:]
                rows.append((f"{model}: forward batch {batch}", lambda d, m=model, k=key: f"{d[m][k]:.3f}"))
        rows += zoo_rows()
        for label, fn in rows:
            cells = []
            for b in have:
                try:
                    cells.append(fn(data[b]))
                except (KeyError, TypeError, ZeroDivisionError):  # TypeError: a figure recorded as null
                    cells.append("-")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        if any("count_differs" in e for b in have for e in data[b].get("zoo", {}).values()):
            lines += ["", "\\* the native model's parameter count differs from the spec's (see the backend's json, "
                          "zoo.<model>.count_differs)."]
        when = sorted({d.get("when", "") for d in data.values()})
        lines += ["", f"Measured {', '.join(w for w in when if w)} on {data[have[0]].get('machine', '?')}."]
    return "\n".join(lines) + "\n"


ZOO = ("resnet50", "mobilenet_v2", "gpt2", "bert_base")
#: the zoo models some backend also builds with its lazy modules (native_torch.ZOO_LAZY)
LAZY = ("resnet50", "mobilenet_v2")


def zoo_rows() -> list:
    """The zoo's large models at batch 1 (bench/run.py's zoo_bench): "—" where a backend has no native model."""
    def cell(model: str, key: str) -> Any:
        def fn(d: dict) -> str:
            entry = d.get("zoo", {}).get(model, {})
            if entry.get(key) is None:
                return "—"
            mark = "*" if "count_differs" in entry else ""  # the native variant is not the spec's network
            return f"{entry[key]:.2f}{mark}"
        return fn

    rows = []
    for model in ZOO:
        rows += [(f"{model}: abstract init / native abstract", cell(model, "abstract_ratio")),
                 (f"{model}: abstract init, first of its spec and input / native abstract",
                  cell(model, "abstract_first_ratio")),
                 *([(f"{model}: abstract init, first of its spec and input / native abstract, lazy modules",
                     cell(model, "abstract_first_lazy_ratio"))] if model in LAZY else []),
                 (f"{model}: apply_init / native init", cell(model, "init_ratio")),
                 (f"{model}: apply_init, first of its spec and input / native init", cell(model, "init_first_ratio")),
                 *([(f"{model}: apply_init / native init, lazy modules", cell(model, "init_lazy_ratio"))]
                   if model in LAZY else []),
                 (f"{model}: forward batch 1", cell(model, "forward_b1_ratio"))]
    return rows


def chart(data: dict) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart", file=sys.stderr)
        return
    have = [b for b in BACKENDS if b in data]
    if not have:
        return
    labels = []
    for model in ("mlp", "lenet", "resnet18"):
        labels.append((model, "init_ratio", f"{model}\ninit"))
        for key in sorted({k for b in have for k in data[b].get(model, {})
                           if k.startswith("forward_") and k.endswith("_ratio")}):
            labels.append((model, key, f"{model}\nfwd b{key.split('_')[1][1:]}"))
    fig, ax = plt.subplots(figsize=(12, 4.5))
    width = 0.8 / len(have)
    for i, b in enumerate(have):
        values = [data[b].get(m, {}).get(k, 0) for m, k, _ in labels]
        ax.bar([j + i * width for j in range(len(labels))], values, width, label=b)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(1.05, color="grey", linestyle="--", linewidth=0.8, label="forward target 1.05")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], [lab for _, _, lab in labels], fontsize=8)
    ax.set_ylabel("deferinit / native (lower is better)")
    ax.set_title("deferinit against hand-written native code (medians, same process)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "ratios.png", dpi=110)


def main() -> int:
    data = load()
    (RESULTS / "results.json").write_text(json.dumps(data, indent=2))
    text = markdown(data)
    (RESULTS / "results.md").write_text(text)
    chart(data)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
