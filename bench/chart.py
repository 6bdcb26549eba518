"""The chart of bench/run: one PNG, a panel per group of rows of the results table.

- throughput: ours / library for the events/s rows (higher is better), with each row's goal;
- latency: ours / library for the latency and load-time rows (lower is better), with goals;
- absolute: our own events/s where the goal is a rate (the library has no such operation, or
  the goal is not a ratio);
- read side: our lag and API latencies, in ms.

A bar is green when its goal is met, orange when not, blue when the row has no goal. Drawn
with matplotlib's Agg backend and its bundled font: no display, nothing downloaded.
"""
from __future__ import annotations

from pathlib import Path

MET, NOT_MET, NO_GOAL, MISSING = "#2a9d8f", "#e76f51", "#5b7fb3", "#999999"

PANELS = (
    ("throughput", "Throughput: ours / library  (higher is better; | = goal, dashed = parity)", "ratio"),
    ("latency", "Latency and load time: ours / library  (lower is better; | = goal)", "ratio"),
    ("absolute", "Ours only: events/s  (| = goal)", "rate"),
    ("read_side", "Read side (ours only): ms, lower is better", "ms"),
)


def _value_text(value: float, kind: str) -> str:
    if kind == "ratio":
        return f"{value:.2f}×"
    if kind == "rate":
        return f"{value:,.0f}/s"
    return f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def draw(rows, path: Path, title: str) -> None:
    """Writes the chart of `rows` (bench_eventstore.Row) to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(key, heading, kind, [row for row in rows if key in row.charts]) for key, heading, kind in PANELS]
    panels = [panel for panel in panels if panel[3]]
    heights = [max(2, len(members)) * 0.42 + 0.9 for *_, members in panels]
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, sum(heights) + 0.6),
                                gridspec_kw={"height_ratios": heights}, squeeze=False)
    figure.suptitle(title, fontsize=12, fontweight="bold")
    from matplotlib.patches import Patch

    figure.legend(handles=[Patch(color=MET, label="goal met"), Patch(color=NOT_MET, label="goal not met"),
                           Patch(color=NO_GOAL, label="no goal")],
                  loc="upper center", bbox_to_anchor=(0.5, 0.975), ncol=3, fontsize=9, frameon=False)
    for ax, (key, heading, kind, members) in zip(axes[:, 0], panels):
        _panel(ax, heading, kind, members)
    figure.tight_layout(rect=(0, 0, 1, 0.955))
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _panel(ax, heading: str, kind: str, members) -> None:
    values, colours, goals, labels = [], [], [], []
    for row in members:
        value = row.ratio if kind == "ratio" else row.ours
        goal = row.goal if row.goal and (row.goal.kind.startswith("ratio") == (kind == "ratio")) else None
        met = goal.met(row.ours, row.lib) if goal else None
        values.append(value)
        goals.append(goal.value if goal else None)
        labels.append(f"{row.label}  (goal {goal.text()})" if goal else row.label)
        colours.append(MISSING if value is None else NO_GOAL if goal is None or met is None
                       else MET if met else NOT_MET)
    positions = range(len(members))
    ax.barh(list(positions), [v or 0 for v in values], color=colours, height=0.6)
    known = [v for v in values + goals if v is not None]
    right = max(known + ([1.0] if kind == "ratio" else [1.0])) * 1.25
    ax.set_xlim(0, right)
    if kind == "ratio":
        ax.axvline(1.0, color="#555555", linestyle="--", linewidth=1)
    for y, (value, goal) in enumerate(zip(values, goals)):
        if goal is not None:
            ax.plot([goal, goal], [y - 0.42, y + 0.42], color="black", linewidth=2.2)
        text = "not run" if value is None else _value_text(value, kind)
        # On a white box: the text stays readable where it crosses a goal marker.
        ax.text((value or 0) + right * 0.01, y, text, va="center", fontsize=9,
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 1, "alpha": 0.85})
    ax.set_yticks(list(positions), labels, fontsize=9)
    ax.invert_yaxis()
    ax.set_title(heading, fontsize=10, loc="left")
    ax.tick_params(axis="x", labelsize=8)
    if kind == "rate":
        ax.xaxis.set_major_formatter(lambda x, _: f"{x / 1000:,.0f}k")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
