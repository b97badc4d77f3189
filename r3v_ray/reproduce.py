"""The paper's table in miniature: zero-shot CoT, warm-up M0, STaR and R3V after K rounds, and test-time
selection for the last R3V model, over several seeds (issue 9).

Per seed: the R3V loop runs rounds 0..K; the STaR baseline adopts R3V's round 0 (the warm-up is the same for
both methods, so M0 is trained once) and runs its own rounds 1..K. A seed changes every random choice: the tiny
model's initialisation, sampling, data building, training order and evaluation sampling (the task data stays).
"""

from __future__ import annotations

import logging
import statistics
import time

from r3v_ray import store
from r3v_ray.config import RunConfig
from r3v_ray.report import figure_png
from r3v_ray.rundir import RunDir
from r3v_ray.selftrain import run_local

log = logging.getLogger("r3v.reproduce")

ROWS = [  # (label, method, round: 0 or "K", metric)
    ("zero-shot CoT (untrained)", "r3v", 0, "zero-shot"),
    ("warm-up M0, Test@1", "r3v", 0, "test@1"),
    ("STaR, Test@1", "star", "K", "test@1"),
    ("R3V, Test@1", "r3v", "K", "test@1"),
    ("R3V, Majority@N", "r3v", "K", "majority@{n}"),
    ("R3V, Select@N", "r3v", "K", "select@{n}"),
    ("R3V, Oracle@N", "r3v", "K", "oracle@{n}"),
]


def seed_config(base: RunConfig, seed: int, method: str) -> RunConfig:
    data = base.model_dump(mode="json")
    data.update(name=f"{base.name}-s{seed}-{method}", method=method, seed=seed)
    for section in ("training", "reflect", "evaluation"):
        data[section]["seed"] = seed
    if data["model"].get("tiny") is not None:  # a different random initialisation per seed
        data["model"]["tiny"]["seed"] = seed
        data["model"]["path"] = f"{base.model.path}-s{seed}"
    return RunConfig.model_validate(data)


def adopt_round0(src: RunConfig, dst: RunConfig) -> None:
    """Give `dst` the finished round 0 of `src` (same warm-up), recorded under dst's config digest."""
    src_round, dst_round = RunDir.of(src).round(0), RunDir.of(dst).round(0)
    if dst_round.done("train", dst.digest()):
        return
    dst_round.adopt(src_round, dst.digest(), note=src_round.uri)
    store.write_text(RunDir.of(dst).config, dst.to_yaml())


def run_seed(base: RunConfig, seed: int, temperatures: list[float] = ()) -> tuple[dict, dict]:
    """(the main table's row values, the temperature sweep's row values) for one seed."""
    r3v, star = seed_config(base, seed, "r3v"), seed_config(base, seed, "star")
    run_local(r3v)
    adopt_round0(r3v, star)
    run_local(star, from_round=1)
    k, n = base.rounds, base.evaluation.n
    evals = {m: {r: store.read_json(RunDir.of(c).round(r).eval_json) for r in (0, k)}
             for m, c in (("r3v", r3v), ("star", star))}
    row = {label: evals[method][0 if rnd == 0 else k][metric.format(n=n)] for label, method, rnd, metric in ROWS}
    sweep = {}
    temperatures = [t for t in temperatures if t != base.evaluation.temperature]
    if temperatures:
        sweep = sweep_values(evals["r3v"][k], base.evaluation.temperature, sweep_temperatures(r3v, temperatures), n)
    return row, sweep


SWEEP_METRICS = [("Test@1", "test@1"), ("Majority@N", "majority@{n}"), ("Select@N", "select@{n}"),
                 ("Oracle@N", "oracle@{n}")]


def sweep_temperatures(cfg: RunConfig, temperatures: list[float]) -> dict[float, dict]:
    """Evaluate the run's last model again with its N samples drawn at each temperature.

    Why: Majority@N needs concentrated samples and Select@N needs diverse ones, so one temperature can favour one
    over the other; the sweep shows the trade-off. Each result is kept under the round directory
    (eval-sweep/T<t>/) with the config digest and reused on a re-run.
    """
    from r3v_ray.evaluation import evaluate
    from r3v_ray.rounds import read_split
    from r3v_ray.tasks import get_task

    task = get_task(cfg.task.name, **cfg.task.params)
    records = None
    out = {}
    for t in temperatures:
        last = RunDir.of(cfg).round(cfg.rounds)
        uri = store.join(last.uri, "eval-sweep", f"T{t:g}")
        done = store.join(uri, "eval.json")
        finished = store.read_json(done) if store.exists(done) else {}
        if finished.get("config_digest") == cfg.digest():
            out[t] = finished
            continue
        data = cfg.model_dump(mode="json")
        data["evaluation"]["temperature"] = t
        records = records if records is not None else read_split(cfg, task, cfg.task.data_dir, "test")
        # No greedy pass: Test@1 does not depend on the temperature and the round's own evaluation has it.
        metrics = evaluate(RunConfig.model_validate(data), last.checkpoint, records, task, uri,
                           cfg.rounds, greedy=False)
        metrics.update(temperature=t, config_digest=cfg.digest())
        store.write_json(done, metrics)
        out[t] = metrics
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
    out = {}
    for label in next(iter(per_seed.values())):
        values = [per_seed[s][label] for s in per_seed]
        out[label] = {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "values": values}
    return out


def _ordered(summary: dict[str, dict]) -> dict[str, dict]:
    """The paper's row order (a summary read back from JSON comes with sorted keys)."""
    order = [label for label, *_ in ROWS]
    return dict(sorted(summary.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))


def table_markdown(summary: dict[str, dict], seeds: list[int], n: int) -> str:
    summary = _ordered(summary)
    lines = [f"| model / metric (N={n}) | mean | spread (std) | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---|---|" + "---|" * len(seeds)]
    for label, row in summary.items():
        lines.append(f"| {label.replace('@N', f'@{n}')} | {row['mean']:.2f} | {row['std']:.2f} | "
                     + " | ".join(f"{v:.2f}" for v in row["values"]) + " |")
    return "\n".join(lines)


def plot_png(summary: dict[str, dict], n: int) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = _ordered(summary)
    labels = [label.replace("@N", f"@{n}").replace(", ", "\n").replace(" (", "\n(") for label in summary]
    means = [row["mean"] for row in summary.values()]
    stds = [row["std"] for row in summary.values()]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(range(len(means)), means, yerr=stds, capsize=4, color="#4c72b0")
    ax.set_xticks(range(len(means)), labels, fontsize=7)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("R3V in miniature (mean and std over seeds)")
    ax.grid(axis="y", alpha=0.3)
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


def reproduce(base: RunConfig, seeds: list[int], out_dir: str | None = None, temperatures: list[float] = ()) -> dict:
    """Run every seed, then write the table (reproduction.md/.json/.png) and, with `temperatures`, the last R3V
    model's test-time selection at those sampling temperatures too (sweep.png and a second table)."""
    if not (base.evaluation.zero_shot and base.evaluation.select):
        raise ValueError("the reproduction table needs evaluation.zero_shot and evaluation.select switched on")
    out = out_dir or store.join(base.storage.root, f"{base.name}-reproduction")
    start = time.time()
    per_seed, per_seed_sweep = {}, {}
    for seed in seeds:
        t0 = time.time()
        per_seed[seed], sweep = run_seed(base, seed, temperatures)
        if sweep:
            per_seed_sweep[seed] = sweep
        log.info("seed %d done in %.0fs: %s", seed, time.time() - t0, per_seed[seed])
    summary = summarize(per_seed)
    n = base.evaluation.n
    table = table_markdown(summary, seeds, n)
    minutes = (time.time() - start) / 60
    result = {"seeds": seeds, "rounds": base.rounds, "n": n, "per_seed": per_seed, "summary": summary,
              "minutes": round(minutes, 1)}
    text = f"# R3V in miniature\n\n{table}\n\n![reproduction](reproduction.png)\n\n"
    if per_seed_sweep:
        result["temperature_sweep"] = per_seed_sweep
        text += ("## The last R3V model's candidates at other sampling temperatures\n\n"
                 f"{sweep_markdown(per_seed_sweep, n)}\n\n![temperature sweep](sweep.png)\n\n")
        store.write_bytes(store.join(out, "sweep.png"), sweep_plot_png(per_seed_sweep, n))
    text += f"{len(seeds)} seeds, K = {base.rounds}, {minutes:.1f} minutes.\n"
    store.write_json(store.join(out, "reproduction.json"), result)
    store.write_text(store.join(out, "reproduction.md"), text)
    store.write_bytes(store.join(out, "reproduction.png"), plot_png(summary, n))
    log.info("reproduction written to %s\n%s", out, table)
    return result
