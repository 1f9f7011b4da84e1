"""The report: ``RESULTS.md`` (machine header, a summary of the targets, one section per
workload) and ``chart.png`` (one panel per workload)."""

import datetime
import os

from .common import fmt, verdict

LIMITS = ("memcpy", "in-RAM sum")


def table(header, rows):
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def checks_table(checks):
    return table(
        ["target", "measured", "goal", "verdict"],
        [[c.what, c.measured, c.target, f"**{verdict(c.passed)}**"] for c in checks],
    )


def markdown(cfg, sections, machine_lines, command, errors):
    """The whole RESULTS.md text."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = ["# outcore side by side: benchmark results", ""]
    if cfg.mode == "quick":
        out += [
            (
                "> **QUICK SMOKE RUN** (`--quick`: small sizes, few rounds). The numbers only show "
                "that the suite works; they are not measurements of the issue's workloads. Run "
                "`--full` on a quiet machine for those."
            ),
            "",
        ]
    out += [f"{now}, `{command}` ({cfg.mode} sizes). Machine:", ""]
    out += [f"* {line}" for line in machine_lines]
    out += [
        "",
        (
            "Ratios compare systems measured in this same run on the same data. GB/s are "
            "decimal (10^9 B/s); MiB = 2^20 B, MB = 10^6 B."
        ),
        "",
    ]
    checks = [c for s in sections for c in s.checks]
    if checks:
        passed = sum(c.passed is True for c in checks)
        out += (
            ["## Targets", "", f"{passed} of {len(checks)} met.", ""] + checks_table(checks) + [""]
        )
    if errors:
        out += ["## Workloads not run or failed", ""] + [f"* {k}: `{e}`" for k, e in errors] + [""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for note in s.notes:
            out += [note, ""]
        for header, rows in s.tables:
            out += table(header, rows) + [""]
    out.append("![chart](chart.png)")
    return "\n".join(out) + "\n"


def chart(sections, path, title):
    """One horizontal bar panel per workload: outcore orange, peers blue, machine limits
    gray; a log scale when the values span more than 100×; a target as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = [s for s in sections if s.bars]
    if not sections:
        return False
    heights = [max(1.6, 0.35 * len(s.bars) + 0.9) for s in sections]
    fig, axes = plt.subplots(
        len(sections),
        1,
        figsize=(9, sum(heights)),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for ax, s in zip(axes[:, 0], sections):
        bars = s.bars[::-1]
        values = [b.value for b in bars]
        colors = [
            "tab:gray" if b.label in LIMITS else "tab:orange" if b.is_outcore else "tab:blue"
            for b in bars
        ]
        ax.barh([b.label for b in bars], values, color=colors)
        positive = [v for v in values if v > 0]
        if positive and max(positive) / min(positive) > 100:
            ax.set_xscale("log")
        for y, v in enumerate(values):
            ax.text(v, y, f" {fmt(v)}", va="center", fontsize=8)
        if s.chart_target:
            ax.axvline(s.chart_target[0], color="tab:red", linestyle="--", linewidth=1)
            ax.text(
                s.chart_target[0],
                len(bars) - 0.4,
                f" {s.chart_target[1]}",
                color="tab:red",
                fontsize=7,
            )
        ax.set_title(s.title, fontsize=9, loc="left")
        better = "higher" if s.chart_higher_is_better else "lower"
        ax.set_xlabel(f"{s.chart_unit} ({better} is better)", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.margins(x=0.15)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(cfg, sections, machine_lines, command, errors, outdir):
    os.makedirs(outdir, exist_ok=True)
    label = "QUICK SMOKE RUN (small sizes, noisy) — " if cfg.mode == "quick" else ""
    chart(
        sections,
        os.path.join(outdir, "chart.png"),
        f"{label}outcore vs alternatives, same data, same run",
    )
    md = markdown(cfg, sections, machine_lines, command, errors)
    with open(os.path.join(outdir, "RESULTS.md"), "w") as f:
        f.write(md)
    return md
