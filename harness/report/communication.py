"""Communication overhead (report 4.4): weight sync and trajectory transfer, time, share and bytes."""

from __future__ import annotations

from harness.report.cells import TableContext, claimed, config, interval, num, recorded, table, value


def communication_table(ctx: TableContext) -> tuple[str, list[str]]:
    h, rows, lines = ctx.h, [], []
    remote = [c for c in ctx.cases if c.remote]
    multi_node = any(c["sync_network_bytes"] for c in remote)
    for c in remote:
        central = c.inference == "central"
        for kind, what in ((h["weight_sync"], "sync"), (h["transfer"], "transfer")):  # metrics `sync_ms`, `transfer_ms`, ...
            if central and what == "sync":
                rows.append(
                    [kind, "n/a: in-process", "", "0.0", "", config(c), c.workers, "0", *([""] if multi_node else []), ""]
                )
                continue
            ms, share, nbytes = c[f"{what}_ms"], c[f"{what}_share"], c[f"{what}_bytes"]
            network = c["sync_network_bytes"] if what == "sync" else None
            report = " / ".join(
                x
                for x in (claimed(c, f"{what}_ms", digits=1, suffix=" ms"), claimed(c, f"{what}_share", digits=1, suffix="%"))
                if x
            )
            figure = f"{what}_bytes"
            rows.append([kind, value(ms, 2), interval(ms, 2), value(share, 1, 100), interval(share, 1, 100), config(c), c.workers,
                         recorded(ctx, c, figure, num(nbytes)), *([num(network)] if multi_node else []), report])  # fmt: skip
        # Null dispatch means none happened (central inference); absent, that an older harness did not time it.
        if c["dispatch_ms"] or ("dispatch_ms" in c.not_recorded and not central):
            rows.append([h["dispatch"], recorded(ctx, c, "dispatch_ms", value(c["dispatch_ms"], 2)), interval(c["dispatch_ms"], 2) if c["dispatch_ms"] else "",
                         "", "", config(c), c.workers, "", *([""] if multi_node else []), ""])  # fmt: skip
        if c["clock_violations"]:
            lines.append(f"{c.name}: {c['clock_violations']} worker time(s) broke causality by more than the clock offset's "
                         "uncertainty; those transfer times are suspect (kept as measured, never clamped).")  # fmt: skip
        if c["communication_share"]:
            what = "trajectory transfer (weight loads stay in-process)" if central else "weight sync + trajectory transfer"
            share = c["communication_share"]
            span = f" (95% CI {interval(share, 1, 100)})" if share.has_interval else f" (n={share.n}: no interval)"
            lines.append(f"{c.name}: {what} is {100 * share.value:.1f}%{span} of iteration time.")
    if not rows:
        return "No process backend in this part: weight sync and transfer do not apply in-process.", []
    headers = [h["comm_type"], f"{h['mean_ms']}, {h['of_runs']}", "95% CI (ms)", f"{h['share']}, {h['of_runs']}", "95% CI (%)",
               h["config"], h["workers"], "Bytes serialized / iteration", *(["Bytes over the network / iteration"] if multi_node else []),
               f"{h['report']} (ms / %)"]  # fmt: skip
    lines.append(
        "Request dispatch: the learner sending the sample request to every worker, counted in neither sampling nor "
        "transfer (under overlap it happens inside the previous iteration's collect). "
        "Times: each run's mean per iteration, then the mean over runs with a 95% t-interval (shares clipped to 0–100%). "
        "Bytes: what was serialized for the move, measured (a weight broadcast is stored once and read by every worker on "
        "its node)"
        + (
            "; over the network: what nodes other than the learner's fetched."
            if multi_node
            else "; every worker ran on the learner's node, so nothing crossed a network."
        )
    )
    return table(rows, headers), lines
