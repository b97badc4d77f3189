"""The `r3v` command line. Each subcommand imports what it needs only when it runs, so `r3v --help` is fast."""

from __future__ import annotations

import argparse
import os
import sys


def _cmd_build_tiny_model(args) -> int:
    from r3v_ray.models.tiny import TinySpec, build_tiny_model
    from r3v_ray.pipeline.prepare import tokenizer_corpus

    spec = TinySpec(family=args.family, hidden_size=args.hidden_size, num_layers=args.num_layers, seed=args.seed)
    print(build_tiny_model(args.out, spec, corpus=tokenizer_corpus()))
    return 0


def _cmd_make_data(args) -> int:
    from r3v_ray.tasks import get_task

    task = get_task("synthetic")
    out = task.write_dataset(args.out, args.num_train, args.num_test, args.seed)
    print(f"wrote {args.num_train} train and {args.num_test} test questions to {out}")
    return 0


def _cmd_show_config(args) -> int:
    from r3v_ray.config import load_config

    if args.reference:
        from r3v_ray.config_reference import reference_markdown

        print(reference_markdown(), end="")
        return 0
    if args.config is None:
        print("error: give a config file, or --reference", file=sys.stderr)
        return 2
    cfg = load_config(args.config, args.set)
    print(cfg.to_yaml(), end="")
    return 0


def _cmd_run(args) -> int:
    """The whole loop (rounds 0..K): locally, or one Ray job per round with --address."""
    import os
    import time

    from r3v_ray.run import store
    from r3v_ray.run.layout import RunDir
    from r3v_ray.pipeline.loop import run_local, submit_rounds

    cfg, sets = _load(args)
    start = time.time()
    if getattr(args, "address", None):
        submit_rounds(cfg, args.config, args.address, sets, args.from_round, args.force)
    else:
        run_local(cfg, args.from_round, args.force)
    run = RunDir(cfg.run_dir if store.is_uri(cfg.run_dir) else os.path.abspath(cfg.run_dir))
    table = _final_table(cfg, run)
    print(f"finished in {time.time() - start:.0f}s. Report: {run.report} (plots beside it); where it stands: "
          f"r3v status {run.uri}; TensorBoard: tensorboard --logdir {run.uri}\n")
    print(table)  # last: the numbers a user came for
    return 0


def _load(args):
    """(config, its --set overrides) of a command with --config, --set and --base-dir: with --base-dir, the config's
    relative paths (storage.root, task.data_dir, model.path) are resolved against it, and said so."""
    import logging

    from r3v_ray.config import load_config
    from r3v_ray.cluster.preflight import absolute_overrides

    cfg, sets = load_config(args.config, args.set), list(args.set)
    if getattr(args, "base_dir", None):
        resolved = absolute_overrides(cfg, args.base_dir)
        if resolved:
            logging.getLogger("r3v").info("relative paths resolved against --base-dir %s: %s",
                                          os.path.abspath(args.base_dir), ", ".join(resolved))
            sets += resolved
            cfg = load_config(args.config, sets)
    return cfg, sets


def _final_table(cfg, run) -> str:
    """The accuracy table of every evaluated round, as the report has it."""
    from r3v_ray.observe.report import round_summaries, table_markdown

    evals = [s["eval"] for s in round_summaries(run.uri, cfg.rounds) if s["eval"]]
    return table_markdown({f"{cfg.name} ({cfg.method})": evals})


def _cmd_status(args) -> int:
    """Where a run stands, from its files (any storage.root)."""
    import json

    from r3v_ray.observe.status import StatusError, format_status, run_status

    try:
        status = run_status(args.run_dir, verify=args.verify)
    except StatusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(status.to_dict(), indent=2) if args.json else format_status(status))
    return 0


def _cmd_round(args) -> int:
    from r3v_ray.pipeline.round import run_round

    cfg, _sets = _load(args)
    metrics = run_round(cfg, args.round, force=args.force)
    print(f"round {args.round} finished: " + ", ".join(f"{k}={v:.2f}" for k, v in metrics.items()
                                                      if isinstance(v, float)))
    return 0


def _cmd_serve(args) -> int:
    from r3v_ray.serving.launch import serve_forever

    return serve_forever(args)


def _cmd_plan(args) -> int:
    """The resources each stage will ask for; starts nothing."""
    import json

    import yaml

    from r3v_ray.config import ConfigError, load_config
    from r3v_ray.cluster.plan import report

    cluster = None
    if args.cluster:
        try:
            cluster = yaml.safe_load(open(args.cluster))
        except OSError as exc:
            raise ConfigError(f"{args.cluster}: cannot read the cluster config ({exc.strerror})") from None
    text, data = report(load_config(args.config, args.set), cluster)
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


def _cmd_data_inspect(args) -> int:
    import yaml

    from r3v_ray.config import TaskConfig
    from r3v_ray.tasks import get_task
    from r3v_ray.tasks.base import printable
    from r3v_ray.tasks.summary import format_summary, summarize

    params = {}
    for item in args.param:
        if "=" not in item:
            print(f"error: --param {item!r}: expected KEY=VALUE", file=sys.stderr)
            return 2
        key, raw = item.split("=", 1)
        params[key.strip()] = yaml.safe_load(raw)
    try:
        task = get_task(args.task, **params)
        summary = summarize(task, args.path, args.split, limit=args.limit,
                            allow_external_images=args.allow_external_images,
                            max_image_pixels=args.max_image_pixels or TaskConfig().max_image_pixels)
    except (OSError, ValueError, TypeError) as exc:  # no data file, unknown task or task parameter
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    print(format_summary(summary, top=args.top))
    if summary.report.read == 0:  # skips alone are listed above and are no failure; nothing at all is
        print(f"error: nothing could be read from {printable(summary.report.source)}", file=sys.stderr)
        return 1
    return 0


def _cmd_reproduce(args) -> int:
    from r3v_ray.run import store
    from r3v_ray.config import load_config
    from r3v_ray.experiments.reproduce import SCALING_CANDIDATES, SCALING_NS, VARIANTS, reproduce

    if args.quick and args.seeds is not None:
        print("error: --quick is one seed (seed 0); give either --quick or --seeds", file=sys.stderr)
        return 2
    cfg = load_config(args.config, args.set)
    seeds = [0] if args.quick else (args.seeds or [0, 1, 2])
    # A quick run writes its own table, so it never overwrites the 3-seed one; its seed's runs are shared.
    out = args.out or (store.join(cfg.storage.root, f"{cfg.name}-reproduction-quick") if args.quick else None)
    ns = SCALING_NS if args.scaling_ns is None else args.scaling_ns
    candidates = SCALING_CANDIDATES if args.scaling_candidates is None else args.scaling_candidates
    variants = tuple(args.variants or VARIANTS)
    result = reproduce(cfg, seeds, out, args.eval_temperatures, ns, candidates, variants)
    print(f"done in {result['minutes']} minutes")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from typing import get_args

    from r3v_ray.config import ModelFamily, TinyModelConfig  # pydantic only, no torch
    from r3v_ray.cluster.connect import ADDRESS_HELP

    parser = argparse.ArgumentParser(
        prog="r3v", description="R3V self-training with reflection for vision-language models, on Ray."
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="every log line: the libraries' too, and a line per training step")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("build-tiny-model", help="build a tiny random model of a family (local tokenizer, no hub)")
    p.add_argument("--out", required=True, help="output directory (a Hugging Face model directory)")
    p.add_argument("--family", default="qwen2_vl", choices=get_args(ModelFamily), help="model family (default qwen2_vl)")
    p.add_argument("--hidden-size", type=int, default=TinyModelConfig().hidden_size)
    p.add_argument("--num-layers", type=int, default=TinyModelConfig().num_layers)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_build_tiny_model)

    p = sub.add_parser("make-data", help="write the built-in synthetic task (jsonl + png images)")
    p.add_argument("--out", required=True)
    p.add_argument("--num-train", type=int, default=200)
    p.add_argument("--num-test", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_make_data)

    for name, help_text, default in (
        ("run", "run the self-training loop (rounds 0..K) of a config", None),
        ("demo", "the whole loop on the built-in task with the tiny model (configs/demo.yaml)", "configs/demo.yaml"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", default=default, required=default is None)
        p.add_argument("--address", help=ADDRESS_HELP + ": one Ray job per round")
        p.add_argument("--from-round", type=int, default=0)
        p.add_argument("--force", action="store_true", help="redo stages recorded under a different config, or "
                                                            "whose outputs are missing or damaged")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
        _base_dir_flag(p)
        _verbose_flag(p)
        p.set_defaults(func=_cmd_run)

    p = sub.add_parser("reproduce", help="the paper's table in miniature over several seeds (STaR, R3V, ablations, "
                                         "test-time scaling)")
    p.add_argument("--config", default="configs/reproduce.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0 1 2")
    p.add_argument("--quick", action="store_true",
                   help="one seed (0), written to <storage.root>/<name>-reproduction-quick")
    p.add_argument("--out", help="output directory (default: <storage.root>/<name>-reproduction)")
    p.add_argument("--eval-temperatures", type=float, nargs="*", default=[], metavar="T",
                   help="also evaluate the last R3V model with its N candidates sampled at these temperatures")
    p.add_argument("--scaling-ns", type=int, nargs="*", default=None, metavar="N",
                   help="the last R3V and mixed-set models' test-time scaling curves: Select@N for these N "
                        "(default: the paper's 2..6; none: no curve)")
    p.add_argument("--scaling-candidates", type=int, default=None, metavar="N",
                   help="candidates drawn once per question for the curve: Majority@n and Oracle@n up to N "
                        "(default: the paper's 10)")
    p.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                   choices=["r3v", "star", "no-refine", "no-select", "mixed"],
                   help="the runs per seed (default: all; r3v always runs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser("round", help="run one round of a config in this process (see jobs/round.py)")
    p.add_argument("--config", required=True)
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--force", action="store_true", help="redo stages recorded under a different config, or whose "
                                                        "outputs are missing or damaged")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    _base_dir_flag(p)
    _verbose_flag(p)
    p.set_defaults(func=_cmd_round)

    p = sub.add_parser("status", help="where a run stands: rounds and stages done, running or failed, what a re-run "
                                      "would do next (reads the run's files; any storage.root)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="<storage.root>/<name>: a local path or a URI (s3://...)")
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument("--verify", action="store_true", help="also compare every finished stage's outputs with their "
                   "recorded checksums (reads them all; their sizes are always compared)")
    p.set_defaults(func=_cmd_status)

    from r3v_ray.serving.launch import add_serve_args  # argparse only; Ray Serve loads when the command runs

    p = add_serve_args(sub.add_parser("serve", help="serve a checkpoint: best-of-N self-selection over HTTP (Ray Serve)"))
    p.set_defaults(func=_cmd_serve)

    data = sub.add_parser("data", help="look at a task's data").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("inspect", help="counts read and skipped (with reasons; every image is decoded), an example "
                                        "prompt, the answers")
    p.add_argument("--task", required=True, help="a registered task: synthetic, geoqa, tabmwp, chartqa, ...")
    p.add_argument("--path", required=True, help="the task's data directory (or file, for the generic task)")
    p.add_argument("--split", default="train")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="task parameter (YAML value)")
    p.add_argument("--limit", type=int, default=None, help="read at most this many records")
    p.add_argument("--top", type=int, default=10, help="answers to list")
    p.add_argument("--allow-external-images", action="store_true",
                   help="read images outside the data directory (task.allow_external_images)")
    p.add_argument("--max-image-pixels", type=int, default=None,
                   help="skip images with more pixels than this, from their header (default: task.max_image_pixels')")
    p.set_defaults(func=_cmd_data_inspect)

    p = sub.add_parser("plan", help="print the resources each stage of a config asks for (starts nothing)")
    p.add_argument("--config", required=True)
    p.add_argument("--cluster", help="a cluster launcher config (cluster.yaml): match stages to its node types")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("config", help="validate a config and print it with every default filled in")
    p.add_argument("config", nargs="?")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. rounds=1")
    p.add_argument("--reference", action="store_true",
                   help="print every key with its type, default and meaning (docs/configuration.md)")
    p.set_defaults(func=_cmd_show_config)
    return parser


def _base_dir_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-dir", metavar="DIR",
                   help='resolve the config\'s relative paths (storage.root, task.data_dir, model.path) against DIR; '
                        'in a submitted Ray job: --base-dir "$PWD", the directory you submit from')


def _verbose_flag(p: argparse.ArgumentParser) -> None:
    # Also after the subcommand (`r3v run --verbose`); SUPPRESS keeps a `r3v -v run` from being reset to False.
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


# Commands that start Ray and run stages: they check first that this Python has what the stages import.
RUNS_STAGES = {"run", "demo", "round", "serve", "reproduce"}


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message says all a user needs (the setting, file or job, and what to do): printed as one
    `error: ...` line, exit status 2, never a traceback."""
    from r3v_ray.config import ConfigError  # includes ModelFamilyError
    from r3v_ray.run.manifest import ConfigChangedError, RunDirError
    from r3v_ray.cluster.connect import AddressError
    from r3v_ray.pipeline.loop import RoundJobError
    from r3v_ray.serving.checkpoint import CheckpointError
    from r3v_ray.run.store import StorageError
    from r3v_ray.tasks.base import RecordError

    return (ConfigError, ConfigChangedError, RunDirError, RecordError, StorageError, CheckpointError, AddressError,
            RoundJobError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if next((a for a in argv if not a.startswith("-")), None) in RUNS_STAGES:
        from r3v_ray.cluster import needs  # before the parser, which imports pydantic

        needs.check_or_exit()
    args = build_parser().parse_args(argv)
    from r3v_ray.observe import console

    console.setup(verbose=args.verbose)
    try:
        return args.func(args)
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
