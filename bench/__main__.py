"""``python -m bench`` (full sizes, writes bench/results.md and bench/results.json) and
``python -m bench --smoke`` (small sizes for CI, prints the table). See bench/README.md."""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import anyio
import orjson

from . import burst, caches, common, contenders, failover, idle, latency, memory, runtime, sidebyside, startup
from . import profile as profiler
from .common import FULL, ROOT, SMOKE, BenchResult, Sizes, say, stop_everything
from .report import Run, load_average, machine_facts, render, to_json

BENCHMARKS: dict[str, Callable[[Sizes], Awaitable[BenchResult]]] = {
    "latency": latency.run,
    "burst": burst.run,
    "idle": idle.run,
    "memory": memory.run,
    "startup": startup.run,
    "failover": failover.run,
    "vs-burst": sidebyside.run_burst,
    "vs-memory": sidebyside.run_memory,
    "vs-scale": sidebyside.run_scale,
    "caches": caches.run,
}


def _sizes(base: Sizes, overrides: Sequence[str]) -> Sizes:
    changes: dict[str, object] = {}
    fields = {f.name for f in dataclasses.fields(Sizes)}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"python -m bench: error: --set {item!r}: use one of {', '.join(sorted(fields))}=VALUE")
        current = getattr(base, key)
        if isinstance(current, tuple):
            raise SystemExit(f"python -m bench: error: --set {key} is not settable from the command line")
        changes[key] = type(current)(value)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _wait_for_load(limit: float, max_wait: float) -> float:
    """Waits (polling every 30 s, at most ``max_wait``) until the 1-minute load is at most ``limit``."""
    started = time.monotonic()
    while load_average()[0] > limit and time.monotonic() - started < max_wait:
        say(f"load average {load_average()[0]:.2f} > {limit}: waiting (up to {max_wait / 60:.0f} min in all)")
        time.sleep(30)
    return time.monotonic() - started


async def _run_all(names: Sequence[str], sizes: Sizes, run: Run, profile: bool, profile_dir: Path) -> None:
    for name in names:
        say(f"== {name}")
        started = time.perf_counter()
        try:
            res = await BENCHMARKS[name](sizes)
        except Exception as exc:  # one failed benchmark must not hide the others' figures
            traceback.print_exception(exc, file=sys.stderr)
            res = BenchResult(name, name, error="; ".join(f"{type(e).__name__}: {e}" for e in _leaves(exc)))
            say(f"{name} FAILED: {res.error}")
        res.seconds = time.perf_counter() - started
        run.results.append(res)
    if profile:
        say("== profile")
        try:
            run.profile = await profiler.run(sizes, profile_dir)
        except Exception as exc:
            run.profile = [f"Profiling failed: {type(exc).__name__}: {exc}"]
            say(run.profile[0])


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="small sizes (CI): finishes in under 3 minutes")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--set", action="append", default=[], metavar="SIZE=VALUE",
                        help="override one size, e.g. --set latency_mds=50 (names in bench/common.py Sizes)")
    parser.add_argument("--out", type=Path, default=None,
                        help="markdown report (default: bench/results.md for full runs, none for --smoke)")
    parser.add_argument("--json", type=Path, default=None,
                        help="raw figures as JSON (default: bench/results.json for full runs)")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                        help="profile a burst with py-spy (default: on for full runs when py-spy is installed)")
    parser.add_argument("--controller-arg", action="append", default=[], metavar="FLAG",
                        help="extra flag for every controller started, e.g. --controller-arg=--workers=16")
    parser.add_argument("--contenders", default="",
                        help="side by side: only these contenders (comma-separated keys: "
                             f"{','.join(sorted(contenders.ALL_KEYS))}); the reference of the ratios always runs")
    parser.add_argument("--controller-env", choices=("runtime", "dev"), default="runtime",
                        help="run the controller from a venv with only its runtime dependencies, as in the image "
                             "(default; built once, see bench/runtime.py), or from this development venv")
    parser.add_argument("--max-load", type=float, default=None,
                        help="wait until the 1-minute load average is at most this (default 1.5 for full runs)")
    parser.add_argument("--max-load-wait", type=float, default=1200.0, help="give up waiting after this many seconds")
    args = parser.parse_args(argv)

    common.EXTRA_CONTROLLER_ARGS[:] = args.controller_arg
    if args.contenders:
        chosen = frozenset(k.strip() for k in args.contenders.split(",") if k.strip())
        if chosen - contenders.ALL_KEYS:
            parser.error(f"unknown contender(s) {sorted(chosen - contenders.ALL_KEYS)}")
        contenders.SELECTED = chosen
    if args.controller_env == "runtime":
        common.CONTROLLER_PYTHON, common.CONTROLLER_ENV = runtime.runtime_python()
        other = contenders.baseline()
        if other is not None and common.CONTROLLER_PYTHON is not None:
            tree = Path(other.wrapper[-1].removeprefix("PYTHONPATH="))
            if (tree / "pyproject.toml").exists():
                contenders.BASELINE_PYTHON, _ = runtime.runtime_python(tree)
            else:
                runtime.compile_tree(common.CONTROLLER_PYTHON, tree)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    sizes = _sizes(SMOKE if args.smoke else FULL, args.set)
    full = not args.smoke
    out = args.out if args.out is not None else (ROOT / "bench" / "results.md" if full else None)
    json_out = args.json if args.json is not None else (ROOT / "bench" / "results.json" if full else None)
    profile = args.profile if args.profile is not None else (full and profiler.py_spy() is not None)
    max_load = args.max_load if args.max_load is not None else (1.5 if full else None)

    waited = _wait_for_load(max_load, args.max_load_wait) if max_load is not None else 0.0
    started = time.perf_counter()
    run = Run(command=" ".join(["python -m bench", *argv]), mode="full" if full else "smoke",
              started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), facts=machine_facts(),
              load_start=load_average(), load_waited=waited)
    run.facts["controller environment"] = common.CONTROLLER_ENV
    say(f"{run.mode} run of {', '.join(names)}; load average {run.load_start}; the controller runs from "
        f"{common.CONTROLLER_ENV}")
    # SIGTERM (CI timeouts, `timeout`) unwinds like Ctrl-C; whatever is still running is then stopped.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        with tempfile.TemporaryDirectory(prefix="msc-bench-profile-") as tmp:
            profile_dir = out.parent if out is not None else Path(tmp)
            anyio.run(_run_all, names, sizes, run, profile, profile_dir, backend="asyncio")
    except KeyboardInterrupt:
        say("interrupted: stopping every controller and control plane this run started")
        return 130
    finally:
        stop_everything()
    run.load_end = load_average()
    run.finished = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    run.seconds = time.perf_counter() - started
    text = render(run)
    print(text)
    if out is not None:
        out.write_text(text)
        say(f"wrote {out}")
    if json_out is not None:
        json_out.write_bytes(orjson.dumps(to_json(run), option=orjson.OPT_INDENT_2))
        say(f"wrote {json_out}")
    say(f"done in {run.seconds:.0f}s")
    return 1 if any(r.error for r in run.results) else 0


if __name__ == "__main__":
    sys.exit(main())
