"""The run report, rebuilt after every round (docs/run-directory.md): report.md with the accuracy table, the
sample pool, the training data, the losses, the skipped records and the stage times of every round, and its plots
(accuracy.png: accuracy per round; loss.png: loss per term over the steps; samples.png: share of correct samples
per round). Everything it shows comes from the round manifests (r3v_ray/run/layout.py, r3v_ray/run/manifest.py) and
eval.json, through r3v_ray/run/store.py, so it works on any storage.root; `round_summaries` is the one reading of them
(the TensorBoard rounds log, r3v_ray/observe/tensorboard.py, shows the same numbers).

`write_report` is the table alone, for several runs side by side (e.g. R3V and its STaR baseline). Rounds
evaluated with a test-time scaling curve (evaluation.scaling_ns) add a table of every point, and the accuracy plot
an accuracy-vs-N panel for each run's last round that has one.
"""

from __future__ import annotations

import io

from r3v_ray.run import store
from r3v_ray.method.metrics import curve_points
from r3v_ray.method.reflect import LOSS_KEYS, TASKS, TERMS

CURVES = [("oracle", "Oracle@n"), ("majority", "Majority@n"), ("select", "Select@n")]

METRIC_ORDER = ["zero-shot", "test@1", "oracle@", "majority@", "select@", "faithful@", "grounded@"]
LOSS_TERMS = tuple(zip(LOSS_KEYS, ("total",) + TERMS))  # (key, column title)
HISTORY_POINTS = 200  # per-step losses kept in a round's manifest for loss.png (TensorBoard has every step)


# -- what a run's files say ----------------------------------------------------------------------------------------


def round_summaries(run_uri: str, rounds: int) -> list[dict]:
    """One summary per round 0..rounds that has a manifest, from its finished stages and its eval.json:
    {"round", "eval" (eval.json or None), "pool" (k >= 1: the sample pool), "examples" ({task: n}), "losses"
    (final_/mean_ per term), "train" (steps, examples, examples/s), "history" (per-step losses, thinned),
    "skipped" (what was skipped where), "seconds" ({stage: s})}."""
    from r3v_ray.run.layout import RunDir

    run = RunDir(run_uri)
    out = []
    for k in range(rounds + 1):
        rd = run.round(k)
        manifest = rd.manifest()
        if manifest is None:
            continue
        done = {name: rec for name, rec in manifest.stages.items() if rec.get("status") == "done"}
        sample = (done.get("sample") or {}).get("stats") or {}
        build = (done.get("build") or {}).get("stats") or {}
        train = (done.get("train") or {}).get("metrics") or {}
        ev = store.read_json(rd.eval_json) if "eval" in done and store.exists(rd.eval_json) else None
        summary = {
            "round": k,
            "eval": ev,
            "pool": _pool(sample, build) if "sample" in done else None,
            "examples": dict(build.get("examples") or {}),
            "losses": {key: train[key] for key in (f"{w}_{t}" for w in ("final", "mean") for t, _ in LOSS_TERMS)
                       if isinstance(train.get(key), (int, float))},
            "train": {key: train.get(key) for key in ("steps", "examples", "examples_per_second", "skipped_too_long")}
            if "train" in done else None,
            "history": (done.get("train") or {}).get("history") or {},
            "skipped": _skipped(k, sample, build, train, ev),
            "seconds": {name: rec["seconds"] for name, rec in done.items()
                        if isinstance(rec.get("seconds"), (int, float))},
        }
        out.append(summary)
    return out


def _pool(sample: dict, build: dict) -> dict:
    """Round k's sample pool: this round's samples and how many were right; the pool's questions (rounds 1..k) by
    how many of their samples are right (from the build stage, which reads the whole pool)."""
    n, correct = sample.get("num_samples"), sample.get("num_correct")
    return {
        "questions": sample.get("num_rows"),
        "samples": n,
        "correct": correct,
        "share_correct": (correct / n) if n else None,
        "skipped": sample.get("skipped", sample.get("num_skipped")),
        "questions_none_correct": build.get("questions_no_positive"),
        "questions_some_correct": build.get("questions_some_positive"),
        "questions_all_correct": build.get("questions_all_positive"),
        "pool_samples": build.get("samples"),
    }


def _skipped(k: int, sample: dict, build: dict, train: dict, ev: dict | None) -> list[dict]:
    """[{"stage", "count", "why", "file"?, "examples"?}] for every stage of round k that skipped something."""
    prefix = f"round-{k:03d}"
    out = []
    if sample.get("skipped"):
        out.append({"stage": "sample", "count": sample["skipped"], "why": "questions that could not be sampled",
                    "file": f"{prefix}/skipped.json"})
    if build.get("skipped_unreadable_image"):
        out.append({"stage": "build", "count": build["skipped_unreadable_image"], "why": "examples whose image "
                    "cannot be read", "file": f"{prefix}/build-skipped.json"})
    if train.get("skipped_too_long"):
        out.append({"stage": "train", "count": train["skipped_too_long"], "why": "examples longer than "
                    "training.max_seq_len"})
    if ev and ev.get("skipped"):
        out.append({"stage": "eval", "count": len(ev["skipped"]), "why": "test questions scored wrong because "
                    "they could not be sampled", "file": f"{prefix}/eval.json",
                    "examples": [f"{s.get('question_id')}: {s.get('reason')}" for s in ev["skipped"][:3]]})
    for kind, count in ((ev or {}).get("pass_skipped") or {}).items():
        out.append({"stage": "eval", "count": count, "why": f"questions the {kind} pass skipped (scored wrong)",
                    "file": f"{prefix}/eval.json"})
    return out


def thin_history(history: list[dict], points: int = HISTORY_POINTS) -> dict[str, list]:
    """Per-step records as columns ({"step": [...], "loss": [...], ..., "lr": [...]}), at most `points` steps
    (evenly spaced, the last always kept): what a manifest keeps for loss.png."""
    if not history:
        return {}
    every = max(1, -(-len(history) // points))
    kept = history[every - 1::every]
    if kept[-1] is not history[-1]:
        kept.append(history[-1])
    keys = ["step"] + [key for key, _ in LOSS_TERMS] + ["lr"]
    return {key: [round(float(h[key]), 6) if key != "step" else int(h[key]) for h in kept] for key in keys}


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


def loss_png(summaries: list[dict]) -> bytes | None:
    """Loss per term over the steps, a line per round; None without any training yet."""
    trained = [s for s in summaries if s["history"].get("step")]
    if not trained:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(LOSS_TERMS), figsize=(14.0, 3.4))
    for ax, (key, title) in zip(axes, LOSS_TERMS):
        for s in trained:
            # A term is exactly 0 in a step whose batch holds none of its examples: a gap, not a point.
            values = [v if v else float("nan") for v in s["history"][key]]
            if any(v == v for v in values):
                ax.plot(s["history"]["step"], values, label=f"round {s['round']}", color=f"C{s['round'] % 10}")
        ax.set_title(f"loss ({title})")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("token-mean NLL")
    axes[0].legend(fontsize=7)
    return figure_png(fig)


def samples_png(summaries: list[dict]) -> bytes | None:
    """Share of correct samples per round, beside the pool's questions with none / some / all correct; None before
    round 1 has sampled."""
    pools = [(s["round"], s["pool"]) for s in summaries if s["pool"] and s["pool"].get("share_correct") is not None]
    if not pools:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [k for k, _ in pools]
    fig, (share_ax, split_ax) = plt.subplots(1, 2, figsize=(10.0, 3.6))
    share_ax.plot(rounds, [100 * p["share_correct"] for _, p in pools], marker="o")
    share_ax.set_ylim(0, 100)
    share_ax.set_ylabel("correct samples (%)")
    share_ax.set_title("share of correct samples per round")
    bottom = [0] * len(pools)
    for key, label in (("questions_none_correct", "none correct"), ("questions_some_correct", "some correct"),
                       ("questions_all_correct", "all correct")):
        values = [p.get(key) or 0 for _, p in pools]
        split_ax.bar(rounds, values, bottom=bottom, label=label, width=0.6)
        bottom = [b + v for b, v in zip(bottom, values)]
    split_ax.set_ylabel("questions in the pool")
    split_ax.set_title("pool questions by correct samples")
    split_ax.legend(fontsize=7)
    for ax in (share_ax, split_ax):
        ax.set_xticks(rounds)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    return figure_png(fig)


def run_report_markdown(title: str, label: str, summaries: list[dict], intro: list[str],
                        plots: dict[str, bool]) -> str:
    """report.md of one run (`label` in its table) from its round summaries; `plots` says which of loss.png and
    samples.png exist."""
    evals = [s["eval"] for s in summaries if s["eval"]]
    body = [f"# {title}", "", *intro, "", "## Accuracy on the test split (%)", ""]
    body += [table_markdown({label: evals}) if evals else "No round has been evaluated yet.", ""]
    if evals:
        body += ["![accuracy per round](accuracy.png)", ""]
        scaling = scaling_markdown({label: evals})
        if scaling:
            body += [scaling, ""]

    pools = [s for s in summaries if s["pool"]]
    body += ["## Sample pool", ""]
    if pools:
        body += ["Round k's pool holds the samples of rounds 1..k: its questions are counted by how many of their "
                 "samples are correct; the samples and the share of correct ones are round k's own.", "",
                 "| round | questions | none correct | some correct | all correct | samples | correct | "
                 "correct share | skipped |", "|---|---|---|---|---|---|---|---|---|"]
        for s in pools:
            p = s["pool"]
            share = f"{100 * p['share_correct']:.1f} %" if p.get("share_correct") is not None else ""
            body.append(f"| {s['round']} | {_cell(p['questions'])} | {_cell(p['questions_none_correct'])} | "
                        f"{_cell(p['questions_some_correct'])} | {_cell(p['questions_all_correct'])} | "
                        f"{_cell(p['samples'])} | {_cell(p['correct'])} | {share} | {_cell(p['skipped'])} |")
        body.append("")
        if plots.get("samples"):
            body += ["![share of correct samples per round](samples.png)", ""]
    else:
        body += ["No round has sampled yet (round 0 trains on the warm-up set only).", ""]

    built = [s for s in summaries if s["examples"]]
    body += ["## Training data (examples per task)", ""]
    if built:
        body += ["| round | " + " | ".join(TASKS) + " | total |", "|---|" + "---|" * (len(TASKS) + 1)]
        for s in built:
            counts = [s["examples"].get(t, 0) for t in TASKS]
            body.append(f"| {s['round']} | " + " | ".join(str(c) for c in counts) + f" | {sum(counts)} |")
        body.append("")
    else:
        body += ["No training set has been built yet.", ""]

    trained = [s for s in summaries if s["train"]]
    body += ["## Training loss", ""]
    if trained:
        header = ["round", "steps", "examples/s"] + [f"{w} {name}" for _, name in LOSS_TERMS for w in ("final", "mean")]
        body += ["Token-mean NLL per term (the total is L_SFT + alpha L_REF + beta L_SEL).", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for s in trained:
            rate = s["train"].get("examples_per_second")
            cells = [str(s["round"]), _cell(s["train"].get("steps")), f"{rate:.1f}" if rate else ""]
            cells += [_loss(s["losses"].get(f"{w}_{key}")) for key, _ in LOSS_TERMS for w in ("final", "mean")]
            body.append("| " + " | ".join(cells) + " |")
        body.append("")
        if plots.get("loss"):
            body += ["![loss per term over the steps](loss.png)", ""]
    else:
        body += ["No round has trained yet.", ""]

    body += ["## Skipped records", ""]
    skipped = [(s["round"], item) for s in summaries for item in s["skipped"]]
    if skipped:
        for k, item in skipped:
            where = f" ([{item['file']}]({item['file']}))" if item.get("file") else ""
            line = f"- round {k}, {item['stage']}: {item['count']} {item['why']}{where}"
            if item.get("examples"):
                line += ": " + "; ".join(item["examples"])
            body.append(line)
    else:
        body.append("None: every question was sampled and every example trained on.")
    body.append("")

    stages = ["sample", "build", "train", "eval"]
    body += ["## Stage times (s)", "", "| round | " + " | ".join(stages) + " | total |", "|---|" + "---|" * 5]
    for s in summaries:
        secs = s["seconds"]
        cells = [f"{secs[st]:.1f}" if st in secs else "" for st in stages]
        body.append(f"| {s['round']} | " + " | ".join(cells) + f" | {sum(secs.values()):.1f} |")
    return "\n".join(body) + "\n"


def write_run_report(run_uri: str, title: str, label: str, rounds: int, intro: list[str],
                     summaries: list[dict] | None = None) -> str:
    """report.md, accuracy.png, loss.png and samples.png of one run, rebuilt from its files (or from `summaries`
    already read); returns the accuracy table (one row per evaluated round)."""
    from r3v_ray.run.layout import RunDir

    run = RunDir(run_uri)
    summaries = round_summaries(run_uri, rounds) if summaries is None else summaries
    evals = [s["eval"] for s in summaries if s["eval"]]
    plots = {}
    for key, uri, png in (("loss", run.loss_plot, loss_png(summaries)), ("samples", run.samples_plot,
                                                                        samples_png(summaries))):
        if png is not None:
            store.write_bytes(uri, png)
            plots[key] = True
    if evals:
        store.write_bytes(run.plot, plot_png({label: evals}))
    store.write_text(run.report, run_report_markdown(title, label, summaries, intro, plots))
    return table_markdown({label: evals}) if evals else ""


def _cell(value) -> str:
    return "" if value is None else str(value)


def _loss(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else ""


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
