"""The run report: a table of every round's metrics (report.md) and a plot (accuracy.png), rewritten each round.

Several runs (e.g. R3V and its STaR baseline) can share one report: their columns stand side by side. Rounds
evaluated with a test-time scaling curve (evaluation.scaling_ns) add a table of every point, and the plot an
accuracy-vs-N panel for each run's last round that has one.
"""

from __future__ import annotations

import io

from r3v_ray import store
from r3v_ray.evaluation import curve_points

CURVES = [("oracle", "Oracle@n"), ("majority", "Majority@n"), ("select", "Select@n")]

METRIC_ORDER = ["zero-shot", "test@1", "oracle@", "majority@", "select@"]


def collect(run_uri: str, rounds: int) -> list[dict]:
    """eval.json of each finished round of one run (missing rounds are left out)."""
    from r3v_ray.rundir import RunDir

    run = RunDir(run_uri)
    paths = [run.round(k).eval_json for k in range(rounds + 1)]
    return [store.read_json(p) for p in paths if store.exists(p)]


def metric_names(evals: list[dict]) -> list[str]:
    names = []
    for ev in evals:
        for key in ev:
            if key not in names and any(key.startswith(p) for p in METRIC_ORDER):
                names.append(key)
    return sorted(names, key=lambda k: next(i for i, p in enumerate(METRIC_ORDER) if k.startswith(p)))


def table_markdown(runs: dict[str, list[dict]]) -> str:
    """One row per (run, round), one column per metric; values in percent."""
    names = metric_names([ev for evals in runs.values() for ev in evals])
    lines = ["| run | round | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for label, evals in runs.items():
        for ev in evals:
            cells = [f"{ev[n]:.2f}" if isinstance(ev.get(n), (int, float)) else "" for n in names]
            lines.append(f"| {label} | {ev['round']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def scaling_markdown(runs: dict[str, list[dict]]) -> str:
    """One table per (run, round) with a scaling curve: a row per n, a column per curve; "" when none has one."""
    parts = []
    for label, evals in runs.items():
        for ev in evals:
            curves = {name: dict(curve_points(ev, name)) for name, _ in CURVES}
            ns = sorted({n for points in curves.values() for n in points})
            if not ns:
                continue
            lines = [f"Test-time scaling, {label} round {ev['round']} ({ev['scaling']['candidates']} candidates drawn "
                     "per question; each n reads the first n):", "",
                     "| n | " + " | ".join(title for _, title in CURVES) + " |", "|---|---|---|---|"]
            for n in ns:
                cells = [f"{curves[name][n]:.2f}" if n in curves[name] else "" for name, _ in CURVES]
                lines.append(f"| {n} | " + " | ".join(cells) + " |")
            parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _last_curves(runs: dict[str, list[dict]]) -> dict[str, dict]:
    """{run label: its last round's eval.json} for the runs whose last round has a scaling curve."""
    out = {}
    for label, evals in runs.items():
        if evals and evals[-1].get("scaling"):
            out[label] = evals[-1]
    return out


def plot_png(runs: dict[str, list[dict]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    last = _last_curves(runs)
    if not last:
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
    else:
        fig, (ax, scaling_ax) = plt.subplots(1, 2, figsize=(11.5, 4.0))
        _plot_scaling(scaling_ax, last)
    for label, evals in runs.items():
        rounds = [ev["round"] for ev in evals]
        for name in metric_names(evals):
            xs = [r for r, ev in zip(rounds, evals) if name in ev and name != "zero-shot"]
            ys = [ev[name] for ev in evals if name in ev and name != "zero-shot"]
            if xs:
                ax.plot(xs, ys, marker="o", label=f"{label} {name}")
    all_rounds = sorted({ev["round"] for evals in runs.values() for ev in evals})
    ax.set_xticks(all_rounds)  # rounds are whole numbers
    ax.set_xlabel("round (0 = warm-up)")
    ax.set_ylabel("accuracy on the test split (%)")
    ax.set_title("R3V self-training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return figure_png(fig, dpi=120)


def _plot_scaling(ax, last: dict[str, dict]) -> None:
    for label, ev in last.items():
        for name, title in CURVES:
            points = curve_points(ev, name)
            if points:
                ax.plot(*zip(*points), marker="o", linestyle="--" if name == "oracle" else "-",
                        label=f"{label} {title}")
    ax.set_xticks(sorted({n for ev in last.values() for name, _ in CURVES for n, _ in curve_points(ev, name)}))
    ax.set_xlabel("N (candidates per question)")
    ax.set_ylabel("accuracy on the test split (%)")
    ax.set_title("test-time scaling, last round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def figure_png(fig, dpi: int = 110) -> bytes:
    """A finished matplotlib figure as PNG bytes (closed afterwards: plots are made in long-lived drivers)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def write_report(out_uri: str, runs: dict[str, list[dict]], title: str, notes: list[str] | None = None) -> str:
    """Write report.md and accuracy.png into out_uri; returns the markdown table."""
    table = table_markdown(runs)
    body = [f"# {title}", "", table, "", "![accuracy](accuracy.png)", ""]
    scaling = scaling_markdown(runs)
    if scaling:
        body += [scaling, ""]
    body += [f"- {n}" for n in notes or []]
    store.write_text(store.join(out_uri, "report.md"), "\n".join(body) + "\n")
    store.write_bytes(store.join(out_uri, "accuracy.png"), plot_png(runs))
    return table
