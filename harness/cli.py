"""Command line: `python -m harness run|advise|list|report|export|compare|cluster`.

User mistakes end as one line `error: ...` and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import signal
import sys
from pathlib import Path

from rich.console import Console

from harness.errors import HarnessError

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m harness", description="Benchmark harness for parallel PPO.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run a suite and write results/<suite>-<time>/")
    run.add_argument("suite", help="a suite file, e.g. suites/scaling.toml (or just 'scaling')")
    run.add_argument("--out", type=Path, default=Path("results"), help="parent folder of the run folder (default: results)")
    run.add_argument("--quick", action="store_true", help="shrink budgets for a fast look (not for publishing)")
    run.add_argument("--address", help="Ray cluster address for ray_cluster cases (after the suite's and RAY_ADDRESS)")
    run.add_argument("--case-timeout", type=_positive_seconds, default=3600.0,
                     help="seconds before one case run is stopped (default 3600)")  # fmt: skip
    run.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="finish the runs of RUN_DIR that are not ok, in that folder (same suite and code)")  # fmt: skip
    run.add_argument("--force", action="store_true", help="with --resume: even if the suite or the code changed")
    run.add_argument("--lang", choices=("en", "zh"), default="en", help="language of the report's table headers")

    from harness.advise.command import add_parser as add_advise_parser

    add_advise_parser(commands)

    commands.add_parser("list", help="list backends, suites and PPO presets")

    report = commands.add_parser("report", help="re-render report.md and plots from a run's run.json")
    report.add_argument("run_dir", type=Path)
    report.add_argument("--lang", choices=("en", "zh"), default="en")

    export = commands.add_parser("export", help="write a run's per-iteration curves for TensorBoard")
    # One format so far; a flag, so that another one is a second flag beside it.
    export.add_argument("--tensorboard", dest="format", action="store_const", const="tensorboard", required=True,
                        help="one TensorBoard event stream per finished case run")  # fmt: skip
    export.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    export.add_argument("--out", type=Path, default=None,
                        help="a new or empty folder to write (default: RUN_DIR/tensorboard); never overwritten")  # fmt: skip

    compare = commands.add_parser("compare", help="compare two runs case by case")
    compare.add_argument("run_a", type=Path)
    compare.add_argument("run_b", type=Path)

    cluster = commands.add_parser("cluster", help="start or stop a local multi-node Ray cluster (ray start)")
    cluster.add_argument("action", choices=("up", "down", "status"))
    cluster.add_argument("--nodes", type=int, default=2, help="nodes including the head (up)")
    cluster.add_argument("--cpus-per-node", type=float, default=None, help="CPUs each node advertises (up)")
    cluster.add_argument("--state-file", type=Path, default=None, help="where the cluster is recorded")
    return parser


def _positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def resolve_suite(name: str) -> Path:
    """A path, or a bare suite name looked up in suites/."""
    path = Path(name)
    if path.exists() or path.suffix == ".toml":
        return path
    candidate = SUITES_DIR / f"{name}.toml"
    return candidate if candidate.exists() else path


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from harness.report import write_report
    from harness.runner import run_suite
    from harness.suite import load_suite

    suite = load_suite(resolve_suite(args.suite))
    suite = _with_cluster_address(suite, args.address)
    if args.force and not args.resume:
        raise HarnessError("--force only applies with --resume RUN_DIR")
    run_dir, run = run_suite(suite, args.out, args.quick, sys.argv, args.case_timeout, console, args.resume, args.force)
    report = write_report(run_dir, args.lang)
    console.print(f"results: {run_dir / 'run.json'}\nreport:  {report}")
    failed = sum(1 for c in run["cases"] for r in c["runs"] if r.get("status") != "ok")
    if run["status"] == "interrupted":
        return 128 + signal.Signals[run.get("stopped_by", "SIGINT")].value
    if failed:
        console.print(f"[red]{failed} run(s) failed[/]: their errors are in run.json and the report's notes")
        return 1
    return 0


def _with_cluster_address(suite, cli_address: str | None):  # noqa: ANN001, ANN202 - Suite in, Suite out
    """Fill `address` for cases of a cluster backend (ray_cluster): the suite's own, else RAY_ADDRESS, else --address,
    else the cluster `cluster up` recorded.

    When every such case uses one cluster, its credentials go into this process's environment, so that each
    case process starts with them and Ray reads them on import (Ray 2.60 has no public way to change them later).
    """
    import dataclasses

    from backends import REGISTRY, ray_connect
    from harness.cluster import probe_address, read_state

    recorded = read_state()  # the cluster `python -m harness cluster up` started, if any
    recorded_address = recorded.address if recorded and recorded.status == "up" else None
    fallback = os.environ.get("RAY_ADDRESS") or cli_address or recorded_address
    parts = []
    for part in suite.parts:
        cases = []
        for case in part.cases:
            if REGISTRY[case.backend.name].cluster and "address" not in case.backend.options:
                if not fallback:
                    raise HarnessError(
                        f"case {case.id} needs a Ray cluster address: set `address` in the suite, RAY_ADDRESS, or --address "
                        "(`python -m harness cluster up --nodes 2` starts a local one)"
                    )
                backend = dataclasses.replace(case.backend, options={**case.backend.options, "address": fallback})
                case = dataclasses.replace(case, backend=backend)
            cases.append(case)
        parts.append(dataclasses.replace(part, cases=tuple(cases)))
    addresses = sorted({c.backend.options["address"] for p in parts for c in p.cases if REGISTRY[c.backend.name].cluster})
    # Fail now, in one line, rather than once per case after minutes of other cases.
    for address in addresses:
        probe_address(address, timeout_s=10)
    ray_connect.export_for_children(addresses)
    return dataclasses.replace(suite, parts=tuple(parts))


def cmd_list(console: Console) -> int:
    from algorithms.config import SETTINGS_TABLES
    from backends import DEFAULT_BACKEND, REGISTRY, available

    console.print("[bold]Backends[/]")
    for name, entry in REGISTRY.items():
        flags = [f"inference: {'/'.join(entry.inference_modes)}"]
        if entry.options:
            flags.append(f"options: {', '.join(entry.options)}")
        if name == DEFAULT_BACKEND:
            flags.append("default")
        if not available(name):
            flags.append("NOT AVAILABLE here")
        console.print(f"  {name:16} {entry.summary} ({'; '.join(flags)})")
    console.print("[bold]Suites[/]")
    for path in sorted(SUITES_DIR.glob("*.toml")):
        from harness.suite import load_suite

        try:
            suite = load_suite(path)
            console.print(f"  {path.stem:16} {len(suite.cases):3d} cases  {suite.description}")
        except HarnessError as exc:
            console.print(f"  {path.stem:16} [red]invalid[/]: {exc}")
    from algorithms.registry import DEFAULT_ALGORITHM, LEARNERS

    console.print("[bold]Algorithms[/] (\\[algorithm] name; or any 'module:Class' learner)")
    for name, target in LEARNERS.items():
        console.print(f"  {name:16} {target}" + (" (default)" if name == DEFAULT_ALGORITHM else ""))
    for table, settings in SETTINGS_TABLES.items():
        console.print(f"[bold]Presets of \\[{table}][/] (what each changes from {settings.model.__name__}'s defaults)")
        defaults = dataclasses.asdict(settings.model())
        for name, cfg in settings.presets.items():
            changed = {k: v for k, v in dataclasses.asdict(cfg).items() if v != defaults[k]}
            console.print(f"  {name:16} " + (", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                                                       for k, v in changed.items()) or "the defaults"))  # fmt: skip
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    from harness.advise.report import is_advise_run, write_advise_report
    from harness.report import write_report

    report = write_advise_report(args.run_dir) if is_advise_run(args.run_dir) else write_report(args.run_dir, args.lang)
    console.print(f"report: {report}")
    return 0


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from tabulate import tabulate

    from harness.analysis import run_stats
    from harness.results import load_run
    from harness.stats import EFFECT_THRESHOLD, compare

    run_a, run_b = load_run(args.run_a), load_run(args.run_b)
    stats_a = {c.id: c for cases in run_stats(run_a).values() for c in cases}
    stats_b = {c.id: c for cases in run_stats(run_b).values() for c in cases}
    configs_a = {c["id"]: _case_config(c) for c in run_a["cases"]}
    configs_b = {c["id"]: _case_config(c) for c in run_b["cases"]}
    rows, differing = [], []
    for case_id, a in stats_a.items():
        b = stats_b.get(case_id)
        if b is None or a["fps"] is None or b["fps"] is None:
            continue
        if configs_a[case_id] != configs_b[case_id]:
            differing.append(case_id)
        result = compare(a.samples("fps"), b.samples("fps"))
        ratio = result.ratio
        span = f"{ratio.low:.3f} – {ratio.high:.3f}" if ratio.has_interval else f"n={ratio.n}: too few"
        mark = " (config differs)" if case_id in differing else ""
        rows.append(
            [case_id + mark, f"{a['fps'].value:,.0f}", f"{b['fps'].value:,.0f}", f"{ratio.value:.3f}", span, result.verdict()]
        )
    if not rows:
        raise HarnessError(f"{args.run_a} and {args.run_b} have no measured case in common; compare runs of the same suite")
    if run_a.get("quick") != run_b.get("quick"):
        console.print("[yellow]warning[/]: one run is --quick and the other is not; their budgets differ")
    if run_a["machine"].get("cpu_model") != run_b["machine"].get("cpu_model"):
        console.print("[yellow]warning[/]: the runs come from different machines; ratios mix hardware and code")
    if differing:
        console.print(f"[yellow]warning[/]: {len(differing)} case(s) share a name but not their configuration "
                      f"(env, PPO, backend or learner): {', '.join(differing)}; their ratio is not a like-for-like change")  # fmt: skip
    for line in _not_comparable(run_a, run_b):
        console.print(f"[yellow]not comparable[/]: {line}")
    headers = ["case", "FPS A (geometric mean)", "FPS B", "B / A", "95% CI of B / A",
               f"Welch on log FPS, 5%, change >= {EFFECT_THRESHOLD:.0%}"]  # fmt: skip
    console.print(tabulate(rows, headers, tablefmt="github", disable_numparse=True))
    return 0


def cmd_export(args: argparse.Namespace, console: Console) -> int:
    from harness.export import export_tensorboard

    done = export_tensorboard(args.run_dir, args.out)
    skipped = f"; {done.skipped} failed case run(s) left out" if done.skipped else ""
    console.print(f"tensorboard: {done.out} ({done.streams} case run(s){skipped})\nview with: tensorboard --logdir {done.out}")
    return 0


def _not_comparable(run_a: dict, run_b: dict) -> list[str]:
    """One line per caveat of a run read from an older schema version (harness/migrations.py) that the
    other run does not share: two runs of one old version measured their bytes alike."""
    lines = []
    for name, run, other in (("A", run_a, run_b), ("B", run_b, run_a)):
        for caveat in run.get("caveats", []):
            if caveat not in other.get("caveats", []):
                lines.append(f"{caveat} (run {name} has results schema version {run['migrated_from']})")
    return lines


def _case_config(case: dict) -> dict:
    """What decides a case's numbers, without its results or the report's claims."""
    return {k: v for k, v in case.items() if k not in ("runs", "claims")}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(soft_wrap=True)
    try:
        if args.command == "run":
            return cmd_run(args, console)
        if args.command == "advise":
            from harness.advise.command import cmd_advise

            return cmd_advise(args, console)
        if args.command == "list":
            return cmd_list(console)
        if args.command == "report":
            return cmd_report(args, console)
        if args.command == "export":
            return cmd_export(args, console)
        if args.command == "compare":
            return cmd_compare(args, console)
        from harness.cluster import run_cluster_command

        return run_cluster_command(args.action, args.nodes, args.cpus_per_node, args.state_file)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside a run (the run itself stops cleanly and reports)
        print("interrupted", file=sys.stderr)
        return 130
