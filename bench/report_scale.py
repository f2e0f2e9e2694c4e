"""`lmact report` over stores of many runs of one task: time and peak memory per format.

A store of 1,000 and one of 10,000 runs are made from one Cycler run of tic-tac-toe (4
episodes) copied by SQL, with its random and expert baselines. `copies` are alike (one kind
of run: the paired comparisons pair every run with every other); `models` each have a model
of their own, on the same seeds (10,000 kinds). Each report runs in a process of its own,
timed from its start to its end; its peak memory is its maximum resident set size, which
counts the ~180 MB of what `lmact report` imports. The HTML report writes the viewer pages of
its first 100 runs.

    python bench/report_scale.py [--runs 1000 10000] [--formats md csv json html]
        [--kinds copies models]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers import copy_run, cycler_store, measured_lmact

FORMATS = ("md", "csv", "json", "html")
def base_store(folder: Path) -> tuple[Path, str]:
    """One Cycler run of tic-tac-toe and its baselines; demonstrations under `folder`."""
    path = folder / "base.sqlite"
    return path, cycler_store(path, folder / "demos")


def report(store: Path, fmt: str, folder: Path) -> tuple[float, float, int]:
    """One `lmact report` in its own process: seconds, peak MB, bytes written."""
    out = folder / f"out-{fmt}"
    shutil.rmtree(out, ignore_errors=True)
    words = ["report", "--store", str(store), "--format", fmt]
    if fmt == "html":
        words += ["--out", str(out), "--cache-dir", str(folder)]
    start = time.perf_counter()
    done, peak = measured_lmact(*words, timeout_s=3600)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"lmact report --format {fmt} failed:\n{done.stderr}")
    peak_mb = peak / 1024 / 1024
    size = len(done.stdout.encode()) if fmt != "html" else sum(
        path.stat().st_size for path in out.rglob("*") if path.is_file()
    )  # fmt: skip
    return seconds, peak_mb, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--kinds", nargs="+", default=["copies"], choices=["copies", "models"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        base, run_id = base_store(folder)
        print("| runs | kind | format | seconds | peak MB | output MB |")
        print("|---|---|---|---|---|---|")
        for runs in args.runs:
            for kind in args.kinds:
                store = folder / f"{kind}-{runs}.sqlite"
                shutil.copy(base, store)
                model = {"model": "test/model-{}"} if kind == "models" else {}
                copy_run(store, run_id, runs - 1, **model)
                for fmt in args.formats:
                    seconds, peak, size = report(store, fmt, folder)
                    print(f"| {runs} | {kind} | {fmt} | {seconds:.1f} | {peak:.0f} | "
                          f"{size / 1e6:.1f} |", flush=True)  # fmt: skip
                store.unlink()


if __name__ == "__main__":
    main()
