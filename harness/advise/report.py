"""`report.md` and its plot for an advise run, from its run.json alone (`harness report` re-renders it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tabulate import tabulate

RANKED_SHOWN = 12


def is_advise_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds an advise record (`kind = "advise"`) rather than a suite's run."""
    try:
        return json.loads((Path(run_dir) / "run.json").read_text()).get("kind") == "advise"
    except (OSError, ValueError, AttributeError):
        return False  # the suite report's loader says what is wrong with it


def write_advise_report(out: Path) -> Path:
    record = json.loads((Path(out) / "run.json").read_text())
    lines = _document(record)
    plot = _plot(record, Path(out))
    if plot:
        lines += ["", f"![predicted and measured steps/s]({plot})"]
    path = Path(out) / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def busy_warning(record: dict[str, Any]) -> str | None:
    """One line when other processes kept more than a quarter of the usable CPUs busy as advise started
    (records from before this was measured: the 1-minute load average above half of them)."""
    usable = record["machine"].get("usable_cpus") or record["machine"]["logical_cores"] or 1
    busy = record.get("busy_elsewhere_cores")
    if busy is None:
        busy, how, limit = record["machine"]["load_average"][0], "the 1-minute load average was", 0.5
    else:
        how, limit = "other processes kept busy", 0.25
    if busy <= limit * usable:
        return None
    return (
        f"⚠ The machine was busy when advise started ({how} {busy:.1f} of {usable:g} usable CPUs): every figure "
        "here includes what else was running, and the model assumes the machine to itself."
    )


def _document(record: dict[str, Any]) -> list[str]:
    request, profile, machine = record["request"], record.get("profile"), record["machine"]
    lines = [f"# harness advise: {request['env_id']}" + (f" {request['env_kwargs']}" if request["env_kwargs"] else ""),
             "", f"PPO preset `{request['preset']}`; {machine['cpu_model']}, {profile['usable_cpus'] if profile else '?'} usable "
             f"CPUs; created {record['created']}; status {record['status']}"
             + (f"; took {record['elapsed_s'] / 60:.1f} of {request['budget_s'] / 60:g} budgeted minutes" if "elapsed_s" in record else "")]  # fmt: skip
    if warning := busy_warning(record):
        lines += ["", warning]
    if not profile or "predictions" not in record:
        return [*lines, "", "The profile did not finish: nothing to recommend."]
    chosen = record["recommendation"]
    predicted = next(p for p in record["predictions"] if p["label"] == chosen["label"])
    how = (f"measured {chosen['measured_fps']:,.0f} steps/s; chosen by the {chosen['why']}" if chosen.get("measured_fps")
           else "the model's best; not measured")  # fmt: skip
    lines += ["", "## Recommendation", "", f"**{chosen['label']}**: predicted {chosen['predicted_fps']:,.0f} steps/s, {how}. "
              f"Its largest part: {predicted['dominant']}. Worker inference samples with a policy copy in each worker; "
              "overlap samples the next batch while the learner trains (one policy version of lag)."]  # fmt: skip
    validation = record.get("validation", {})
    if validation.get("validated"):
        lines += ["", "Predicted against measured (this machine; measured: geometric mean of fresh-process repeats, 95% "
                  f"t-interval on log FPS; `{validation['run_dir']}/` holds the runner's own record and report):", ""]  # fmt: skip
        rows = []
        for row in validation["results"]:
            measured = row["measured_fps"]
            interval = (
                f"{row['measured_low']:,.0f} – {row['measured_high']:,.0f}" if row["measured_low"] is not None else "n too small"
            )
            rows.append([row["label"], f"{row['predicted_fps']:,.0f}", f"{measured:,.0f}" if measured else "failed",
                         interval if measured else "-", f"{row['error']:+.0%}" if row["error"] is not None else "-"])  # fmt: skip
        lines.append(tabulate(rows, ["configuration", "predicted steps/s", "measured steps/s", "95% CI", "error (pred / meas - 1)"],
                              tablefmt="github", disable_numparse=True))  # fmt: skip
        if validation.get("runs_ok", 0) < validation.get("runs_planned", 0):
            lines += ["", f"{validation['runs_ok']} of {validation['runs_planned']} validation runs finished within the "
                      "budget (or failed): see the validation's own report for each run's error."]  # fmt: skip
        measured = [r for r in validation["results"] if r["measured_fps"]]
        if measured:
            fastest = max(measured, key=lambda r: r["measured_fps"])
            lines += ["", f"Fastest measured: **{fastest['label']}** ({fastest['measured_fps']:,.0f} steps/s)."]
    else:
        lines += ["", f"**Not validated**: {validation.get('reason', 'the run stopped before validation')}"]
    lines += ["", "## Profile (measured here, each part in a fresh process)", "", *_profile_lines(profile)]
    lines += ["", f"## Ranking (the model's top {RANKED_SHOWN} of {len(record['predictions'])} configurations)", ""]
    rows = [[p["label"], f"{p['fps']:,.0f}", f"{p['iteration_s'] * 1000:.0f}", p["dominant"],
             ", ".join(f"{k} {v * 1000:.0f}" for k, v in p["terms"].items() if v * 1000 >= 0.5)]
            for p in record["predictions"][:RANKED_SHOWN]]  # fmt: skip
    lines.append(tabulate(rows, ["configuration", "predicted steps/s", "iteration ms", "dominant", "terms, ms"],
                          tablefmt="github", disable_numparse=True))  # fmt: skip
    for key, title in (("projection_here", "this machine"), ("projection_target", "the target machine")):
        if key in record:
            lines += ["", *_projection_lines(record[key], title)]
    if "projection_note" in record:
        lines += ["", f"**No projection**: {record['projection_note']}."]
    lines += ["", "The model's equations, and what it leaves out, are in `harness/advise/model.py`."]
    return lines


def _profile_lines(profile: dict[str, Any]) -> list[str]:
    env = profile["env"]
    inference = profile["inference_s"]
    rows = [
        ["env step (random policy)", f"mean {env['step_mean_s'] * 1e6:,.1f} µs, CV {env['step_cv']:.2f}, p99 {env['step_p99_s'] * 1e6:,.1f} µs, "
         f"CPU {env['cpu_fraction']:.0%} of it"],
        ["reset", f"{env['reset_mean_s'] * 1e6:,.1f} µs; episodes of {env['episode_length_mean'] or 0:,.0f} steps"],
        ["observation / action", f"{env['obs_dim']} floats ({env['obs_bytes']} bytes) / {env['act_dim']}"],
        ["policy call (numpy)", ", ".join(f"batch {b}: {inference[b] * 1e6:,.0f} µs" for b in inference)],
        ["learner update", f"{profile['train_s'] * 1000:,.0f} ms per {profile['steps_per_iteration']:,}-step iteration"],
        ["usable CPUs", f"{profile['usable_cpus']:g}"],
    ]  # fmt: skip
    for name, part in profile["remote"].items():
        rows.append([f"{name} workers", f"broadcast {_line_ms(part['sync_s'])} ms (W workers), {part['sync_bytes']:,} bytes; round "
                     f"{_line_ms(part['round_s'])} ms; start-up {_line_ms(part['startup_s'], 1)} ms; "
                     f"{part['worker_mib'] or 0:.0f} MiB each; transfer {part['transfer_per_step_s'] * 1e6:.1f} µs and "
                     f"{part['transfer_bytes_per_step']:.0f} bytes per step"])  # fmt: skip
    for name, part in profile["central"].items():
        rows.append([f"{name} central inference", f"transport and loop {_line_ms(part['overhead_s'], 3)} ms per step (P processes); "
                     f"{part['process_mib'] or 0:.0f} MiB per process"])  # fmt: skip
    if profile["envpool_step_s"]:
        rows.append(["envpool step", f"{_line_ms(profile['envpool_step_s'], 3)} ms (N envs)"])
    for name, why in profile.get("skipped", {}).items():
        rows.append([name, f"not profiled ({why}); its configurations are not ranked"])
    return [tabulate(rows, ["what", "measured"], tablefmt="github", disable_numparse=True)]


def _line_ms(line: dict[str, float], digits: int = 2) -> str:
    return f"{line['intercept'] * 1000:.{digits}f} + {line['slope'] * 1000:.{digits}f}·x"


def _projection_lines(projection: dict[str, Any], title: str) -> list[str]:
    machine = projection["machine"]
    lines = [f"## Projection to {title} (a projection, not a measurement)", "",
             f"{projection['backend']} workers of one env each, worker inference; {machine['cores']:g} cores per node × "
             f"{machine['nodes']} node(s). Speedup over `serial` on the same machine.", ""]  # fmt: skip
    rows = [[r["workers"], r["schedule"], f"{r['fps']:,.0f}", f"{r['speedup']:.2f}x", r["dominant"]] for r in projection["rows"]]
    lines.append(tabulate(rows, ["workers", "schedule", "predicted steps/s", "speedup", "dominant term"], tablefmt="github",
                          disable_numparse=True))  # fmt: skip
    stops = projection["stops_paying"]
    lines += ["", "Adding workers stops paying (doubling gains < 5%) past: "
              + ", ".join(f"{schedule} {count} workers" for schedule, count in stops.items()) + "."]  # fmt: skip
    if projection["assumptions"]:
        lines += ["", "Assumed, not measured: " + "; ".join(projection["assumptions"]) + "."]
    return lines


def _plot(record: dict[str, Any], out: Path) -> str | None:
    if "projection_here" not in record:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    validation = record.get("validation", {})
    measured = [r for r in validation.get("results", []) if r["measured_fps"]]
    if measured:
        predicted = [r["predicted_fps"] for r in measured]
        actual = [r["measured_fps"] for r in measured]
        left.scatter(actual, predicted)
        for row in measured:
            left.annotate(row["label"], (row["measured_fps"], row["predicted_fps"]), fontsize=7)
        top = max(predicted + actual) * 1.1
        left.plot([0, top], [0, top], "k--", linewidth=0.8, label="prediction = measurement")
        left.set_xlim(0, top)
        left.set_ylim(0, top)
        left.legend(fontsize=8)
    else:
        left.text(0.5, 0.5, "not validated", ha="center", va="center", transform=left.transAxes)
    left.set_xlabel("measured steps/s")
    left.set_ylabel("predicted steps/s")
    left.set_title("this machine: predicted against measured")
    for key, style in (("projection_here", "-"), ("projection_target", "--")):
        projection = record.get(key)
        if not projection:
            continue
        machine = projection["machine"]
        where = f"{machine['cores']:g} cores x {machine['nodes']}"
        for schedule in ("sync", "overlap"):
            rows = [r for r in projection["rows"] if r["schedule"] == schedule]
            right.plot([r["workers"] for r in rows], [r["fps"] for r in rows], style, marker="o", markersize=3,
                       label=f"{projection['backend']} {schedule}, {where}")  # fmt: skip
    for row in measured:
        config = row["config"]
        if config["backend"] in ("multiprocessing", "ray_local") and config["envs_per_worker"] == 1:
            right.scatter([config["workers"]], [row["measured_fps"]], color="black", zorder=3)
    right.set_xscale("log", base=2)
    right.set_xlabel("workers")
    right.set_ylabel("predicted steps/s (projection)")
    right.set_title("scaling: projected (lines), measured here (dots)")
    right.legend(fontsize=7)
    figure.tight_layout()
    (out / "plots").mkdir(exist_ok=True)
    figure.savefig(out / "plots" / "advise.png", dpi=110)
    plt.close(figure)
    return "plots/advise.png"
