"""The paper's table in miniature: zero-shot CoT, warm-up M0, STaR, R3V and R3V without each reflection objective
after K rounds, and test-time selection for the last R3V model (at the headline N and as a scaling curve over N),
over several seeds (issues 9 and 20).

Per seed: the R3V loop runs rounds 0..K; STaR and the two ablations (R3V without self-refine, without self-select:
config switches, VARIANTS) adopt R3V's round 0 (the warm-up is the same for all of them, so M0 is trained once) and
run their own rounds 1..K. A seed changes every random choice: the tiny model's initialisation, sampling, data
building, training order and evaluation sampling (the task data stays). Extra evaluations of the last R3V model
(the scaling curve, the temperature sweep) live under its round directory with the digest they were made under and
are reused on a re-run, as finished rounds are.

The paper's numbers beside ours come from Qwen2-VL-7B on GeoQA (the authors' Qwen2-VL repository: its table, and
its test-time scaling figure, read off by eye); ours from the tiny model on the built-in task. They are there for
the shape of the comparison, not as a target.
"""

from __future__ import annotations

import logging
import statistics
import time

from r3v_ray.run import store
from r3v_ray.config import METHOD_PRESETS, RunConfig, config_from_dict
from r3v_ray.method.metrics import curve_points
from r3v_ray.observe.report import figure_png
from r3v_ray.run.layout import RunDir
from r3v_ray.pipeline.loop import run_local

log = logging.getLogger("r3v.reproduce")

# The runs of one seed: the method, and the config switches that make the ablations (the same loop and code).
VARIANTS = {
    "r3v": {},
    "star": {"method": "star", **METHOD_PRESETS["star"]},
    "no-refine": {"reflect": {"use_refine": False}, "training": {"alpha": 0.0}},
    "no-select": {"reflect": {"use_select": False}, "training": {"beta": 0.0}},
    # The paper's test-time scaling model: self-select sets of 2 to 6 candidates (reflect.select_variant: mixed).
    # A set holds only what the pool has for its question, so this run draws 6 samples per question: with the
    # default 3 every set of round 1 would hold 2 or 3 and the model would never read 4 to 6 candidates.
    "mixed": {"reflect": {"select_variant": "mixed"}, "sampling": {"num_samples": 6}},
}
CURVE_VARIANTS = ("r3v", "mixed")  # the last models whose test-time scaling curve is drawn

ROWS = [  # (label, variant, round: 0 or "K", metric); the paper's rows and order, then its ablations
    ("zero-shot CoT (untrained)", "r3v", 0, "zero-shot"),
    ("warm-up M0, Test@1", "r3v", 0, "test@1"),
    ("STaR, Test@1", "star", "K", "test@1"),
    ("R3V, Test@1", "r3v", "K", "test@1"),
    ("R3V, Majority@N", "r3v", "K", "majority@{n}"),
    ("R3V, Select@N", "r3v", "K", "select@{n}"),
    ("R3V, Oracle@N", "r3v", "K", "oracle@{n}"),
    ("R3V w/o self-refine, Test@1", "no-refine", "K", "test@1"),
    ("R3V w/o self-refine, Select@N", "no-refine", "K", "select@{n}"),
    ("R3V w/o self-select, Test@1", "no-select", "K", "test@1"),
    ("R3V w/o self-select, Select@N", "no-select", "K", "select@{n}"),
    ("R3V mixed select sets, Test@1", "mixed", "K", "test@1"),
    ("R3V mixed select sets, Select@N", "mixed", "K", "select@{n}"),
    # Does the answer follow the reasoning (r3v_ray/pipeline/evaluate.py faithfulness_at_1; the built-in task only)
    ("warm-up M0, faithful@1", "r3v", 0, "faithful@1"),
    ("STaR, faithful@1", "star", "K", "faithful@1"),
    ("R3V, faithful@1", "r3v", "K", "faithful@1"),
    ("warm-up M0, grounded@1", "r3v", 0, "grounded@1"),
    ("STaR, grounded@1", "star", "K", "grounded@1"),
    ("R3V, grounded@1", "r3v", "K", "grounded@1"),
]
ROUND_METRICS = ("test@1", "majority@{n}", "select@{n}", "oracle@{n}", "faithful@1", "grounded@1")

PAPER = "Qwen2-VL-7B, GeoQA"
# The authors' Qwen2-VL results on GeoQA: the table (zero-shot CoT, R3V, R3V + test-time selection at N = 3) and
# the test-time scaling figure (read off by eye). Rows they report nothing for on GeoQA are left empty.
PAPER_TABLE = {"zero-shot CoT (untrained)": 17.11, "R3V, Test@1": 51.72}
PAPER_SELECT = {2: 58.6, 3: 57.96, 4: 60.1, 5: 61.4, 6: 64.0}  # Select@3 from the table (figure: about 58.0)
PAPER_MAJORITY = {3: 54.7, 4: 56.6, 5: 57.2, 6: 57.4, 7: 58.6, 8: 59.2, 9: 59.7, 10: 59.8}
# The paper's test-time scaling defaults (`r3v reproduce --scaling-ns/--scaling-candidates`): Select@2..6 from 10
# candidates per question, so Majority@n runs to 10.
SCALING_NS = [2, 3, 4, 5, 6]
SCALING_CANDIDATES = 10


def paper_value(label: str, n: int) -> float | None:
    """The paper's GeoQA number for one of our rows at headline N, or None where it reports none."""
    if label == "R3V, Select@N":
        return PAPER_SELECT.get(n)
    if label == "R3V, Majority@N":
        return PAPER_MAJORITY.get(n)
    return PAPER_TABLE.get(label)


def seed_config(base: RunConfig, seed: int, variant: str) -> RunConfig:
    data = base.model_dump(mode="json")
    data.update(name=f"{base.name}-s{seed}-{variant}", seed=seed)
    for section, changes in VARIANTS[variant].items():
        if isinstance(changes, dict):
            data[section].update(changes)
        else:
            data[section] = changes
    for section in ("training", "reflect", "evaluation"):
        data[section]["seed"] = seed
    if data["model"].get("tiny") is not None:  # a different random initialisation per seed
        data["model"]["tiny"]["seed"] = seed
        data["model"]["path"] = f"{base.model.path}-s{seed}"
    return RunConfig.model_validate(data)


def scaling_config(cfg: RunConfig, ns: list[int], candidates: int | None) -> RunConfig:
    """`cfg` with the evaluation drawing `candidates` per question and Select@n for each of `ns`; a bad n is
    refused here (config validation names the field) before anything runs."""
    data = cfg.model_dump(mode="json")
    data["evaluation"].update(scaling_ns=list(ns), num_candidates=candidates)
    return config_from_dict(data, "r3v reproduce --scaling-ns/--scaling-candidates")


def adopt_round0(src: RunConfig, dst: RunConfig) -> None:
    """Give `dst` the finished round 0 of `src` (same warm-up), recorded under dst's config digest."""
    src_round, dst_round = RunDir.of(src).round(0), RunDir.of(dst).round(0)
    if dst_round.done("train", dst.digest()):
        return
    dst_round.adopt(src_round, dst.digest(), note=src_round.uri)
    store.write_text(RunDir.of(dst).config, dst.to_yaml())


def adopt_round1_samples(src: RunConfig, dst: RunConfig) -> bool:
    """Give `dst` the round-1 samples of `src` when they cannot differ; returns whether it did.

    Round 1 samples M0 on the train split: with M0 adopted from `src` and the same sampling, task, model and seed
    settings (the variants differ only in the reflection data and loss weights) the samples are the same rows, so
    drawing them again per variant only costs time. Later rounds sample each variant's own model.
    """
    src_hashed, dst_hashed = src.hashed(), dst.hashed()
    if any(src_hashed[key] != dst_hashed[key] for key in ("sampling", "task", "model", "seed")) or src.rounds < 1:
        return False
    src_round, dst_round = RunDir.of(src).round(1), RunDir.of(dst).round(1)
    stored = src_round.manifest()
    if stored is None or not stored.done("sample", src.digest()):
        raise RuntimeError(f"{src_round.uri}: round 1 has no finished sample stage under this config to adopt")
    manifest = dst_round.open_manifest(dst.digest())
    if manifest.done("sample"):
        return True
    src_round.verify("sample", stored)  # what is adopted is trusted: as its stage recorded it
    with store.recording() as written:
        for src_uri, dst_uri in ((src_round.samples, dst_round.samples), (src_round.skipped, dst_round.skipped)):
            if store.exists(src_uri):
                store.write_bytes(dst_uri, store.read_bytes(src_uri))
    manifest.record("sample", 0.0, adopted_from=src_round.uri, stats=stored.stages["sample"].get("stats", {}),
                    outputs=dst_round.outputs_of("sample", written))
    return True


def run_seed(base: RunConfig, seed: int, temperatures: list[float] = (), scaling: tuple = (),
             variants: tuple[str, ...] = tuple(VARIANTS)) -> dict:
    """One seed's results: "row" (the main table's values), "sweep" (the temperature sweep's), "curves" ({variant:
    the last model's scaling curve} for CURVE_VARIANTS) and "rounds" ({variant: {round: metrics}}, every round).

    `scaling`: (ns, candidates) for the curves, or () for none. `variants`: the runs to make (R3V always).
    """
    configs = {variant: seed_config(base, seed, variant) for variant in VARIANTS if variant in {"r3v", *variants}}
    r3v = configs["r3v"]
    run_local(r3v)
    for variant, cfg in configs.items():
        if variant != "r3v":
            adopt_round0(r3v, cfg)
            adopt_round1_samples(r3v, cfg)
            run_local(cfg, from_round=1)
    k, n = base.rounds, base.evaluation.n
    evals = {v: {r: store.read_json(RunDir.of(c).round(r).eval_json) for r in range(k + 1)} for v, c in configs.items()}
    row = {}
    for label, variant, rnd, metric in ROWS:
        value = evals.get(variant, {}).get(0 if rnd == 0 else k, {}).get(metric.format(n=n))
        if value is not None:
            row[label] = value
    rounds = {v: {r: {m.format(n=n): e[m.format(n=n)] for m in ROUND_METRICS if m.format(n=n) in e}
                  for r, e in by_round.items()} for v, by_round in evals.items()}
    sweep = {}
    temperatures = [t for t in temperatures if t != base.evaluation.temperature]
    if temperatures:
        sweep = sweep_values(evals["r3v"][k], base.evaluation.temperature, sweep_temperatures(r3v, temperatures), n)
    curves = {}
    for variant in CURVE_VARIANTS:
        if scaling and variant in configs:
            curves[variant] = scaling_curve(configs[variant], *scaling)
            curves[variant]["test@1"] = evals[variant][k]["test@1"]  # the greedy reference line
    return {"row": row, "sweep": sweep, "curves": curves, "rounds": rounds}


def _evaluate_last_model(cfg: RunConfig, eval_cfg: RunConfig, uri: str, digest: str, **extra) -> dict:
    """An extra evaluation of cfg's last model under `eval_cfg`, kept in `uri` (eval.json with `digest`) and
    reused when a re-run finds it finished under the same digest. No greedy pass: Test@1 does not depend on the
    candidates, and the round's own evaluation has it."""
    from r3v_ray.pipeline.evaluate import evaluate
    from r3v_ray.pipeline.round import read_split
    from r3v_ray.tasks import get_task

    done = store.join(uri, "eval.json")
    finished = store.read_json(done) if store.exists(done) else {}
    if finished.get("config_digest") == digest:
        return finished
    task = get_task(cfg.task.name, **cfg.task.params)
    records = read_split(cfg, task, cfg.task.data_dir, "test")
    last = RunDir.of(cfg).round(cfg.rounds)
    metrics = evaluate(eval_cfg, last.checkpoint, records, task, uri, cfg.rounds, greedy=False)
    metrics.pop("model")  # results only, as a round's eval.json (r3v_ray/pipeline/round.py): the path depends on the run's place
    metrics.update(extra, config_digest=digest)
    store.write_json(done, metrics)
    return metrics


def scaling_curve(cfg: RunConfig, ns: list[int], candidates: int | None) -> dict:
    """The last model's test-time scaling curve: {"oracle"|"majority"|"select": {n: accuracy}, "candidates": N}.

    One evaluation draws the candidates once and self-selects over the first n for each n (evaluation.scaling_ns);
    it is kept under the round directory (eval-scaling/) with its config digest and reused on a re-run.
    """

    eval_cfg = scaling_config(cfg, ns, candidates)
    metrics = _evaluate_last_model(cfg, eval_cfg, store.join(RunDir.of(cfg).round(cfg.rounds).uri, "eval-scaling"),
                                   eval_cfg.digest())
    out = {name: dict(curve_points(metrics, name)) for name in ("oracle", "majority", "select")}
    out["candidates"] = metrics["scaling"]["candidates"]
    return out


SWEEP_METRICS = [("Test@1", "test@1"), ("Majority@N", "majority@{n}"), ("Select@N", "select@{n}"),
                 ("Oracle@N", "oracle@{n}")]


def sweep_temperatures(cfg: RunConfig, temperatures: list[float]) -> dict[float, dict]:
    """Evaluate the run's last model again with its N samples drawn at each temperature.

    Why: Majority@N needs concentrated samples and Select@N needs diverse ones, so one temperature can favour one
    over the other; the sweep shows the trade-off. Each result is kept under the round directory
    (eval-sweep/T<t>/) with the run's config digest and reused on a re-run.
    """

    out = {}
    for t in temperatures:
        data = cfg.model_dump(mode="json")
        data["evaluation"]["temperature"] = t
        uri = store.join(RunDir.of(cfg).round(cfg.rounds).uri, "eval-sweep", f"T{t:g}")
        out[t] = _evaluate_last_model(cfg, RunConfig.model_validate(data), uri, cfg.digest(), temperature=t)
    return out


def sweep_values(main_eval: dict, main_temperature: float, sweep: dict[float, dict], n: int) -> dict[str, dict]:
    """{"T=0.5": {"Majority@N": ..., ...}} for one seed, the main evaluation's temperature included; Test@1
    (greedy) is the main evaluation's in every column."""
    evals = {**sweep, main_temperature: main_eval}
    return {f"T={t:g}": {label: (main_eval if label == "Test@1" else evals[t])[metric.format(n=n)]
                         for label, metric in SWEEP_METRICS}
            for t in sorted(evals)}


def _sweep_summary(per_seed: dict[int, dict[str, dict]]) -> dict[str, dict]:
    """{column ("T=0.5"): summarize() of that column over the seeds}, in column order."""
    columns = next(iter(per_seed.values()))
    return {c: summarize({s: v[c] for s, v in per_seed.items()}) for c in columns}


def sweep_markdown(per_seed: dict[int, dict[str, dict]], n: int) -> str:
    """Rows: metrics; columns: temperatures; cells: mean ± std over seeds."""
    stats = _sweep_summary(per_seed)
    columns = list(stats)
    lines = [f"| metric (N={n}), mean ± std over seeds | " + " | ".join(columns) + " |",
             "|---|" + "---|" * len(columns)]
    for label, _ in SWEEP_METRICS:
        lines.append(f"| {label.replace('@N', f'@{n}')} | "
                     + " | ".join(f"{stats[c][label]['mean']:.2f} ± {stats[c][label]['std']:.2f}" for c in columns)
                     + " |")
    return "\n".join(lines)


def summarize(per_seed: dict[int, dict]) -> dict[str, dict]:
    return {label: _stats([per_seed[s][label] for s in per_seed]) for label in next(iter(per_seed.values()))}


def _ordered(summary: dict[str, dict]) -> dict[str, dict]:
    """The paper's row order (a summary read back from JSON comes with sorted keys)."""
    order = [label for label, *_ in ROWS]
    return dict(sorted(summary.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))


def table_markdown(summary: dict[str, dict], seeds: list[int], n: int) -> str:
    """Rows in the paper's order; a last column with the paper's GeoQA number where it reports one."""
    summary = _ordered(summary)
    lines = [f"| model / metric (N={n}) | mean | spread (std) | " + " | ".join(f"seed {s}" for s in seeds)
             + f" | paper ({PAPER}) |", "|---|---|---|" + "---|" * (len(seeds) + 1)]
    for label, row in summary.items():
        paper = paper_value(label, n)
        lines.append(f"| {label.replace('@N', f'@{n}')} | {row['mean']:.2f} | {row['std']:.2f} | "
                     + " | ".join(f"{v:.2f}" for v in row["values"]) + f" | {_cell(paper)} |")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def plot_png(summary: dict[str, dict], n: int) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = _ordered(summary)
    labels = [label.replace("@N", f"@{n}").replace(", ", "\n").replace(" (", "\n(").replace(" w/o", "\nw/o")
              for label in summary]
    means = [row["mean"] for row in summary.values()]
    stds = [row["std"] for row in summary.values()]
    fig, ax = plt.subplots(figsize=(11, 4))
    ax.bar(range(len(means)), means, yerr=stds, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(means)), labels, fontsize=7)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("R3V in miniature (mean and std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    return figure_png(fig)


CURVES = [("majority", "Majority@n"), ("select", "Select@n"), ("oracle", "Oracle@n")]


def scaling_summary(per_seed: dict[int, dict]) -> dict[str, dict[int, dict]]:
    """{curve: {n: {"mean", "std", "values"}}} over the seeds, for the n every seed has; "test@1" likewise.
    Curves read back from reproduction.json (string keys) are taken as they are written."""
    out: dict = {}
    for name, _ in CURVES:
        points = [{int(n): v for n, v in curve.get(name, {}).items()} for curve in per_seed.values()]
        ns = set.intersection(*(set(p) for p in points))
        out[name] = {n: _stats([p[n] for p in points]) for n in sorted(ns)}
    out["test@1"] = _stats([curve["test@1"] for curve in per_seed.values()])
    return out


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "values": values}


def scaling_markdown(per_seed: dict[int, dict]) -> str:
    """Rows: n; columns: our curves (mean ± std over seeds) and the paper's GeoQA figure."""
    stats = scaling_summary(per_seed)
    ns = sorted({n for name, _ in CURVES for n in stats[name]} | set(PAPER_SELECT) | set(PAPER_MAJORITY))
    lines = ["| n | " + " | ".join(f"{title}, mean ± std" for _, title in CURVES)
             + f" | paper Majority@n ({PAPER}) | paper Select@n |", "|---|" + "---|" * (len(CURVES) + 2)]
    for n in ns:
        ours = [f"{stats[name][n]['mean']:.2f} ± {stats[name][n]['std']:.2f}" if n in stats[name] else ""
                for name, _ in CURVES]
        lines.append(f"| {n} | " + " | ".join(ours) + f" | {_cell(PAPER_MAJORITY.get(n))} | "
                     f"{_cell(PAPER_SELECT.get(n))} |")
    test1 = stats["test@1"]
    lines += ["", f"Test@1 (greedy, no candidates): {test1['mean']:.2f} ± {test1['std']:.2f}."]
    return "\n".join(lines)


def scaling_plot_png(per_seed: dict[int, dict]) -> bytes:
    """The paper's figure: accuracy against N for Select@N and Majority@N; ours (mean and std over seeds, with
    greedy Test@1 as a line) beside the paper's GeoQA numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = scaling_summary(per_seed)
    fig, (ours, paper) = plt.subplots(1, 2, figsize=(11, 4))
    for name, title in CURVES[:2]:
        ns = list(stats[name])
        ours.errorbar(ns, [stats[name][n]["mean"] for n in ns], yerr=[stats[name][n]["std"] for n in ns],
                      capsize=3, marker="o", label=title.replace("@n", "@N"))
    ours.axhline(stats["test@1"]["mean"], color="grey", linestyle="--", label="Test@1 (greedy)")
    ours.set_title(f"ours: tiny model, built-in task ({len(per_seed)} seed{'s' * (len(per_seed) > 1)})")
    for label, points in (("Majority@N", PAPER_MAJORITY), ("Select@N", PAPER_SELECT)):
        paper.plot(list(points), list(points.values()), marker="o", label=label)
    paper.set_title(f"paper: {PAPER} (read off its figure)")
    ours.set_xticks(sorted({n for name, _ in CURVES[:2] for n in stats[name]}))
    paper.set_xticks(sorted(set(PAPER_MAJORITY) | set(PAPER_SELECT)))
    for ax in (ours, paper):
        ax.set_xlabel("N (candidates per question)")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return figure_png(fig)


def sweep_plot_png(per_seed: dict[int, dict[str, dict]], n: int) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = _sweep_summary(per_seed)
    temps = [float(c.split("=")[1]) for c in summary]
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, _ in SWEEP_METRICS:
        stats = [column[label] for column in summary.values()]
        ax.errorbar(temps, [x["mean"] for x in stats], yerr=[x["std"] for x in stats], capsize=3, marker="o",
                    linestyle="--" if label == "Test@1" else "-", label=label.replace("@N", f"@{n}"))
    ax.set_xlabel("sampling temperature of the N candidates (Test@1 is greedy)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("last R3V model: test-time selection vs temperature")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return figure_png(fig)


def rounds_markdown(per_seed_rounds: dict[int, dict], n: int) -> str:
    """Every run's metrics per round, mean ± std over the seeds (the rounds every seed has)."""
    first = next(iter(per_seed_rounds.values()))
    metrics = [m.format(n=n) for m in ROUND_METRICS if any(m.format(n=n) in e for r in first.values() for e in r.values())]
    lines = ["| run | round | " + " | ".join(metrics) + " |", "|---|---|" + "---|" * len(metrics)]
    for variant, by_round in first.items():
        for rnd in by_round:
            cells = []
            for m in metrics:
                values = [per_seed_rounds[s][variant][rnd].get(m) for s in per_seed_rounds]
                values = [v for v in values if v is not None]
                cells.append(f"{statistics.fmean(values):.2f} ± {statistics.pstdev(values):.2f}"
                             if len(values) == len(per_seed_rounds) else "")
            lines.append(f"| {variant} | {rnd} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reproduce(base: RunConfig, seeds: list[int], out_dir: str | None = None, temperatures: list[float] = (),
              scaling_ns: list[int] = (), scaling_candidates: int | None = None,
              variants: tuple[str, ...] = tuple(VARIANTS)) -> dict:
    """Run every seed, then write the table (reproduction.md/.json/.png) and every run's metrics per round; with
    `scaling_ns`, the test-time scaling curves of the last R3V models (CURVE_VARIANTS: Select@n for those n, Oracle@n
    and Majority@n up to `scaling_candidates`, scaling.png and a table each); with `temperatures`, the last R3V
    model's test-time selection at those sampling temperatures (sweep.png and a table). `variants`: the runs to make
    per seed (VARIANTS' names; R3V always)."""
    if not (base.evaluation.zero_shot and base.evaluation.select):
        raise ValueError("the reproduction table needs evaluation.zero_shot and evaluation.select switched on")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; known: {list(VARIANTS)}")
    scaling = (list(scaling_ns), scaling_candidates) if scaling_ns else ()
    if scaling:
        scaling_config(base, *scaling)  # a bad n is refused now, not after the seeds have trained
    out = out_dir or store.join(base.storage.root, f"{base.name}-reproduction")
    start = time.time()
    per_seed, per_seed_sweep, per_seed_rounds, seed_minutes = {}, {}, {}, {}
    per_seed_curves: dict[str, dict[int, dict]] = {}
    for seed in seeds:
        t0 = time.time()
        seed_result = run_seed(base, seed, temperatures, scaling, tuple(variants))
        per_seed[seed], per_seed_rounds[seed] = seed_result["row"], seed_result["rounds"]
        if seed_result["sweep"]:
            per_seed_sweep[seed] = seed_result["sweep"]
        for variant, curve in seed_result["curves"].items():
            per_seed_curves.setdefault(variant, {})[seed] = curve
        seed_minutes[seed] = round((time.time() - t0) / 60, 1)
        log.info("seed %d done in %.1f min: %s", seed, seed_minutes[seed], per_seed[seed])
    summary = summarize(per_seed)
    n = base.evaluation.n
    table = table_markdown(summary, seeds, n)
    minutes = (time.time() - start) / 60
    result = {"seeds": seeds, "rounds": base.rounds, "n": n, "variants": ["r3v", *[v for v in variants if v != "r3v"]],
              "per_seed": per_seed, "summary": summary, "per_round": per_seed_rounds,
              "minutes": round(minutes, 1), "seed_minutes": seed_minutes,
              "paper": {"source": PAPER, "table": PAPER_TABLE, "select": PAPER_SELECT, "majority": PAPER_MAJORITY}}
    text = (f"# R3V in miniature\n\nOurs: the tiny model on the built-in task. The paper column: {PAPER} (the "
            "authors' Qwen2-VL results), for reference only; empty where it reports no GeoQA number.\n\n"
            f"{table}\n\n![reproduction](reproduction.png)\n\n"
            f"## Every run per round (mean ± std over the seeds)\n\n{rounds_markdown(per_seed_rounds, n)}\n\n")
    for variant, per_seed_curve in per_seed_curves.items():
        key, png, title = (("scaling", "scaling.png", "the last R3V model") if variant == "r3v" else
                           (f"scaling_{variant}", f"scaling-{variant}.png", f"the last R3V model ({variant} select sets)"))
        result[key] = {"per_seed": per_seed_curve, "summary": scaling_summary(per_seed_curve)}
        candidates = next(iter(per_seed_curve.values()))["candidates"]
        text += (f"## Test-time scaling of {title}\n\n"
                 f"{candidates} candidates drawn per question once; n reads the first n. The paper's numbers are "
                 f"read off its figure ({PAPER}; Select@3 from its table).\n\n"
                 f"{scaling_markdown(per_seed_curve)}\n\n![test-time scaling]({png})\n\n")
        store.write_bytes(store.join(out, png), scaling_plot_png(per_seed_curve))
    if per_seed_sweep:
        result["temperature_sweep"] = per_seed_sweep
        text += ("## The last R3V model's candidates at other sampling temperatures\n\n"
                 f"{sweep_markdown(per_seed_sweep, n)}\n\n![temperature sweep](sweep.png)\n\n")
        store.write_bytes(store.join(out, "sweep.png"), sweep_plot_png(per_seed_sweep, n))
    per = ", ".join(f"seed {s}: {m}" for s, m in seed_minutes.items())
    text += f"{len(seeds)} seed{'s' * (len(seeds) > 1)}, K = {base.rounds}, {minutes:.1f} minutes ({per}).\n"
    store.write_json(store.join(out, "reproduction.json"), result)
    store.write_text(store.join(out, "reproduction.md"), text)
    store.write_bytes(store.join(out, "reproduction.png"), plot_png(summary, n))
    log.info("reproduction written to %s\n%s", out, table)
    return result
