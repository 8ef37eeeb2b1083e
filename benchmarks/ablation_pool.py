"""Pool runs of the sampler ablation: per task, the default against each method on the seeds both ran.

Each file is an ``ablation.json`` written by ``benchmarks/ablation.py`` (one row a study, with its
retimed hypervolume). A study is compared only with studies of the same task and seed, which were
retimed in the same process, so runs on different machines pool as paired differences. A (task,
method, seed) found in two files is an error, not counted twice.

    python benchmarks/ablation_pool.py --rename tpe-indep=auto -- benchmarks/results/ablation-avx2-indep.json ...

``--rename`` maps a method's name in the files to another (``tpe-indep`` was the name of today's
``auto`` before it became the default). Files whose ``auto`` was an earlier sampler must not be given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def load(paths: list[Path], rename: dict[str, str]) -> dict[tuple[str, str, int], float]:
    """Retimed hypervolume by (task, method, seed) over every file."""
    found: dict[tuple[str, str, int], float] = {}
    where: dict[tuple[str, str, int], Path] = {}
    for path in paths:
        for row in json.loads(path.read_text()):
            if "hypervolume_retimed" not in row:
                continue
            key = (row["task"], rename.get(row["method"], row["method"]), row["seed"])
            if key in found:
                raise SystemExit(f"{key} is in both {where[key]} and {path}; give each study once.")
            found[key], where[key] = row["hypervolume_retimed"], path
    return found


def table(hv: dict[tuple[str, str, int], float], default: str) -> str:
    """Markdown: per task and method, seeds shared with ``default``, both means, the paired difference."""
    head = (f"| task | method | seeds | mean HV | {default} on those seeds | {default} minus method (sd) "
            f"| seeds {default} ahead |")
    out = [head, "|---|---|---|---:|---:|---:|---:|"]
    for task in dict.fromkeys(t for t, _, _ in hv):
        for method in sorted({m for t, m, _ in hv if t == task and m != default}):
            seeds = sorted(s for t, m, s in hv if t == task and m == method and (task, default, s) in hv)
            if not seeds:
                continue
            theirs = [hv[task, method, s] for s in seeds]
            ours = [hv[task, default, s] for s in seeds]
            diff = [a - b for a, b in zip(ours, theirs)]
            sd = f"{statistics.stdev(diff):.4f}" if len(diff) > 1 else "-"
            out.append(f"| {task} | {method} | {len(seeds)} ({_ranges(seeds)}) | {statistics.mean(theirs):.4f} | "
                       f"{statistics.mean(ours):.4f} | {statistics.mean(diff):+.4f} ({sd}) | "
                       f"{sum(d > 0 for d in diff)} of {len(diff)} |")
    return "\n".join(out)


def _ranges(seeds: list[int]) -> str:
    parts: list[list[int]] = []
    for s in seeds:
        if parts and s == parts[-1][-1] + 1:
            parts[-1].append(s)
        else:
            parts.append([s])
    return ", ".join(f"{p[0]}-{p[-1]}" if len(p) > 1 else str(p[0]) for p in parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--rename", nargs="*", default=[], metavar="OLD=NEW")
    parser.add_argument("--default", default="auto", help="the method every other is compared with")
    args = parser.parse_args(argv)
    rename = dict(item.split("=", 1) for item in args.rename)
    print(table(load(args.files, rename), args.default))
    return 0


if __name__ == "__main__":
    sys.exit(main())
