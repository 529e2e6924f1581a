"""PNG figures for the report and the DIP benchmarks (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: headless
    import matplotlib.pyplot as plt

    return plt


def throughput_latency(series: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """perf_analyzer: throughput vs p95 latency, one line per (model, transport), points labelled c."""
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for entry in series:
        rows = entry["rows"]
        x = [r["p95_us"] / 1e3 for r in rows]
        y = [r["throughput"] for r in rows]
        label = f"{entry['model']} ({'system shm' if entry['shared_memory'] else 'gRPC'})"
        ax.plot(x, y, marker="o", label=label)
        for r, xi, yi in zip(rows, x, y, strict=True):
            ax.annotate(f"c={int(r['concurrency'])}", (xi, yi), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("p95 latency (ms)")
    ax.set_ylabel("throughput (inferences/s)")
    ax.set_title("perf_analyzer: Triton throughput vs p95 latency")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, plt, path)


def gateway_load(levels: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Gateway Colorize: throughput and p50/p95/p99 latency vs concurrency."""
    if not levels:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    conc = [lv["concurrency"] for lv in levels]
    left.plot(conc, [lv["throughput"] for lv in levels], marker="o")
    left.set_xlabel("concurrency")
    left.set_ylabel("Colorize/s")
    left.set_title("throughput")
    left.set_ylim(bottom=0)  # a flat line must look flat
    for q in ("p50", "p95", "p99"):
        right.plot(conc, [lv["latency_ms"][q] for lv in levels], marker="o", label=q)
    right.set_xlabel("concurrency")
    right.set_ylabel("latency (ms)")
    right.set_title("client-side latency")
    right.legend()
    for ax in (left, right):
        ax.set_xticks(conc)
        ax.grid(alpha=0.3)
    return _save(fig, plt, path)


def breakdown(stages: Mapping[str, float], path: Path, title: str) -> Path | None:
    """One horizontal stacked bar: where a request's time goes (ms per stage)."""
    if not stages:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 2.6))
    start = 0.0
    for name, ms in stages.items():
        ax.barh([0], [ms], left=start, label=f"{name} {ms:.1f} ms")
        start += ms
    ax.set_yticks([])
    ax.set_xlabel("ms")
    ax.set_title(title)
    ax.legend(ncol=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.45))
    return _save(fig, plt, path)


def stacked_bars(
    panels: Mapping[str, Mapping[str, Mapping[str, float]]], path: Path, title: str
) -> Path | None:
    """One panel per group (e.g. an image size), in it one horizontal stacked bar per row (e.g. the
    bare codec and each model), one colour per stage (ms): where each row's time goes."""
    if not panels:
        return None
    plt = _pyplot()
    stages = list(dict.fromkeys(s for rows in panels.values() for row in rows.values() for s in row))
    colours = {stage: plt.get_cmap("tab10")(i % 10) for i, stage in enumerate(stages)}
    heights = [len(rows) for rows in panels.values()]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(10, 0.42 * sum(heights) + 1.2 * len(panels) + 0.8), squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )  # fmt: skip
    for ax, (group, rows) in zip(axes[:, 0], panels.items(), strict=True):
        names = list(rows)
        for y, name in enumerate(names):
            left = 0.0
            for stage, ms in rows[name].items():
                ax.barh([y], [ms], left=left, color=colours[stage])
                left += ms
            ax.annotate(f"{left:.1f} ms", (left, y), xytext=(3, 0), textcoords="offset points", va="center")
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(group, fontsize=9, loc="left")
        ax.set_xlim(right=ax.get_xlim()[1] * 1.12)  # room for the totals
        ax.grid(alpha=0.3, axis="x")
    axes[-1, 0].set_xlabel("ms")
    fig.suptitle(title, fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[s]) for s in stages]
    fig.legend(handles, stages, ncol=4, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, -0.06))
    fig.tight_layout()
    return _save(fig, plt, path)


def bars(values: Mapping[str, float], path: Path, title: str, ylabel: str) -> Path | None:
    if not values:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(list(values), list(values.values()))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=15)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, plt, path)


def jobs_per_second(
    rows: Sequence[Mapping[str, Any]], modes: Sequence[str], path: Path, title: str, ylabel: str
) -> Path | None:
    """Batched DIP: jobs/s against the number of jobs K (log₂ axis), one line per mode."""
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ks = [r["k"] for r in rows]
    for mode, marker in zip(modes, "os^vD", strict=False):
        ax.plot(ks, [r[mode]["jobs_per_s"] for r in rows], marker + "-", label=mode)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("jobs K")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, plt, path)


def autostop_traces(
    runs: Sequence[Mapping[str, Any]], rules: Mapping[str, Any] | None, path: Path
) -> Path | None:
    """DIP early stopping: PSNR and loss per iteration of each run, with where each rule stopped and
    what it returned (`rules`: the stoprules section, when it has run)."""
    if not runs:
        return None
    by_run = {(r["image"], r["sigma"]): r for r in (rules or {}).get("runs", [])}
    plt = _pyplot()
    cols = min(4, len(runs))
    rows = -(-len(runs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.5 * cols, 3.6 * rows), squeeze=False)
    for ax, r in zip(axes.flat, runs, strict=False):
        its = list(range(1, len(r["psnr_trace"]) + 1))
        ax.plot(its, r["psnr_trace"], label="PSNR (EMA iterate)", color="tab:blue")
        ax.axvline(r["returned_iteration"], color="tab:green", ls="--", label="ES-EMV returned")
        ax.axvline(r["best_iteration"], color="tab:gray", ls="-.", lw=0.8, label="best seen")
        rule = by_run.get((r["image"], r["sigma"]))
        title = f"{r['image']} σ={r['sigma']}: ES-EMV gap {r['gap_db']:.2f}"
        if rule is not None:
            ax.axvline(
                rule["discrepancy"]["iteration"], color="black", ls="--", lw=1.0, label="discrepancy, σ"
            )
            refit = rule.get("refit")
            if refit is not None:  # the refit is this very trajectory, cut at the held-out run's choice
                ax.axvline(refit["iteration"], color="tab:red", lw=1.2, label="held-out + refit (default)")
                title += f", default {refit['gap_db']:.2f} dB"
            held = rule["holdout"]  # the held-out run fits 90% of the pixels: another trajectory
            ax.plot([held["iteration"]], [held["psnr"]], "r*", ms=9, label="held-out run's own iterate")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("iteration")
        ax.set_ylabel("PSNR dB")
        loss_ax = ax.twinx()
        loss_ax.semilogy(its, r["loss_trace"], color="tab:purple", alpha=0.4, lw=0.7)
        loss_ax.set_ylabel("loss (MSE to noisy)")
    for ax in list(axes.flat)[len(runs) :]:
        ax.set_visible(False)
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, plt, path, dpi=90)


def _save(fig: Any, plt: Any, path: Path, dpi: int = 110) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")  # keeps legends placed outside the axes
    plt.close(fig)
    return path
