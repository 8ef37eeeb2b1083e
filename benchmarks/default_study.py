"""How long the default study takes, and whether its front meets the bar.

Runs ``squeeze run studies/digits.toml`` at its default budget into a fresh SQLite file, then
checks the front: at least 3 points, one at no more than 30% of the teacher's bytes and within
2 points of the teacher's held-out accuracy.

    python benchmarks/default_study.py [--study studies/digits.toml]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--study", default=str(REPO / "studies" / "digits.toml"))
    args = parser.parse_args()
    from squeeze.search import front

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        env = dict(os.environ, SQUEEZE_STORAGE=url)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "squeeze.search", "run", args.study], check=True, env=env, cwd=REPO)
        elapsed = time.perf_counter() - start
        data = front(args.study, storage=url)
        teacher = data.teacher
        small_and_good = [
            p for p in data.front
            if p.size_bytes <= 0.30 * teacher.size_bytes and p.accuracy >= teacher.accuracy - 0.02
        ]
        print(f"wall clock: {elapsed:.1f} s for {len(data.points)} completed trials on {os.cpu_count()} cores")
        print(f"teacher: accuracy {teacher.accuracy:.4f}, {teacher.size_bytes} bytes")
        print(f"front: {len(data.front)} points")
        for p in data.front:
            print(f"  trial {p.number:3d}: accuracy {p.accuracy:.4f}  {p.size_bytes:7d} bytes "
                  f"({p.size_bytes / teacher.size_bytes:.1%} of teacher)  latency x{p.latency_ratio:.2f}")
        ok = elapsed < 600 and len(data.front) >= 3 and bool(small_and_good)
        print(f"points at <= 30% of teacher bytes within 2 points of its accuracy: {[p.number for p in small_and_good]}")
        print("PASS" if ok else "FAIL")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
