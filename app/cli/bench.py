"""`python main.py bench [NAME ...] [--json] [--quick]`: run the benchmarks in bench/."""

from __future__ import annotations

import importlib
import time

from app.cli.output import emit_json, error, table


def register(sub) -> None:
    from bench import BENCHES

    names = ", ".join(f"{k} ({v[1]})" for k, v in BENCHES.items())
    p = sub.add_parser("bench", help="run benchmarks and print their figures",
                       description=f"Benchmarks: {names}.")
    p.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    p.add_argument("--quick", action="store_true", help="shorter runs (smoke test, noisier)")
    p.add_argument("--json", action="store_true", help="one JSON line per figure")
    p.set_defaults(func=run)


def run(args) -> int:
    from bench import BENCHES, BenchFailed, BenchStopped

    names = args.names or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHES)}")
    rows = []
    for name in names:
        mod = importlib.import_module(BENCHES[name][0])
        t0 = time.monotonic()
        try:
            for fig in mod.run(quick=args.quick):
                if args.json:
                    emit_json(fig.as_dict())
                else:
                    rows.append({
                        "bench": fig.bench, "figure": fig.name,
                        "value": "n/a" if fig.value is None else f"{fig.value:.4g}",
                        "unit": fig.unit, "goal": fig.goal,
                        "met": {True: "yes", False: "NO", None: "-"}[fig.met],
                        "anchor": fig.anchor,
                    })
        except (BenchStopped, BenchFailed) as e:
            stopped = isinstance(e, BenchStopped)
            if args.json:
                emit_json({"event": "stopped" if stopped else "failed", "bench": name,
                           "message": str(e)})
            error(str(e))
            return 3 if stopped else 1
        if not args.json:
            print(f"[{name}] done in {time.monotonic() - t0:.1f} s")
    if not args.json:
        print(table(rows, ["bench", "figure", "value", "unit", "goal", "met", "anchor"]))
    return 0
