"""Run benchmarks and (re)write BENCHMARKS.md.

Usage::

    python benchmarks/run.py                 # every benchmarks/bench_*.py
    python benchmarks/run.py refine cells    # only those (bench_refine.py, bench_cells.py)
    python benchmarks/run.py --quick ...     # smaller problem sizes, for a smoke test

Each ``benchmarks/bench_<name>.py`` defines ``run(quick: bool = False) -> dict`` returning
``{"title": str, "markdown": str, "figures": dict}``.  The runner stores each result with the date,
the machine and the command in ``benchmarks/results/<name>.json`` and renders BENCHMARKS.md from
all stored results, so re-running one benchmark keeps the others' figures (with their own dates).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


#: CPU instruction sets that change inference and training speed (same model name, other chips:
#: bfloat16 training is about 1.9x faster with AVX512-BF16, and only there).
SPEED_FLAGS = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_bf16": "AVX512-BF16",
    "amx_bf16": "AMX",
}


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        for line in lines:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
        have = [name for flag, name in SPEED_FLAGS.items() if flag in flags]
        if flags:
            cpu += f" ({', '.join(have) or 'no AVX2'})"
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores{mem}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def discover() -> dict[str, Path]:
    return {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}


def run_one(name: str, path: Path, quick: bool) -> dict:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(HERE))
    spec.loader.exec_module(module)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    result = module.run(quick=quick)
    result.update(
        name=name,
        date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        machine=machine_description(),
        command=f"python benchmarks/run.py {name}" + (" --quick" if quick else ""),
        seconds=round(time.perf_counter() - t0, 1),
        quick=quick,
        # timings mean little without this: other jobs sharing the 2 cores slow them down
        load=[round(load_before, 2), round(os.getloadavg()[0], 2)],
    )
    return result


def render(results: list[dict]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Every figure here was measured by `benchmarks/run.py` (see each section's command, date "
        "and machine). Re-run a section with its command; the file is regenerated from "
        "`benchmarks/results/*.json`.",
        "",
    ]
    for r in results:
        lines += [
            f"## {r['title']}",
            "",
            f"*Measured {r['date']} on {r['machine']}; command: `{r['command']}`"
            f" ({r['seconds']} s).*"
            + (" **Quick run (reduced sizes).**" if r.get("quick") else ""),
            "",
            r["markdown"].strip(),
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="reduced sizes (smoke test)")
    parser.add_argument("--no-write", action="store_true", help="print, do not store results")
    args = parser.parse_args(argv)
    available = discover()
    names = args.names or list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        print(
            f"unknown benchmark(s): {', '.join(unknown)}; have {', '.join(available)}",
            file=sys.stderr,
        )
        return 2
    RESULTS.mkdir(exist_ok=True)
    for name in names:
        print(f"== {name}", flush=True)
        result = run_one(name, available[name], args.quick)
        print(result["markdown"])
        if not args.no_write:
            (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=float))
    if not args.no_write:
        order = list(available)
        stored = [json.loads(p.read_text()) for p in RESULTS.glob("*.json")]
        stored.sort(key=lambda r: order.index(r["name"]) if r["name"] in order else 99)
        (ROOT / "BENCHMARKS.md").write_text(render(stored))
        print(f"wrote {ROOT / 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
