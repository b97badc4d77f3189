"""The `r3v` command line. Each subcommand imports what it needs only when it runs, so `r3v --help` is fast."""

from __future__ import annotations

import argparse
import logging
import sys


def _cmd_build_tiny_model(args) -> int:
    from r3v_ray.models.tiny import TinySpec, build_tiny_model

    spec = TinySpec(hidden_size=args.hidden_size, num_layers=args.num_layers, seed=args.seed)
    print(build_tiny_model(args.out, spec))
    return 0


def _cmd_make_data(args) -> int:
    from r3v_ray.tasks import get_task

    task = get_task("synthetic")
    out = task.write_dataset(args.out, args.num_train, args.num_test, args.seed)
    print(f"wrote {args.num_train} train and {args.num_test} test questions to {out}")
    return 0


def _cmd_show_config(args) -> int:
    from r3v_ray.config import load_config

    cfg = load_config(args.config, args.set)
    print(cfg.to_yaml(), end="")
    return 0


def _cmd_demo(args) -> int:
    from r3v_ray.config import load_config
    from r3v_ray.engines import GenerationRequest, SamplingParams, create_engine
    from r3v_ray.prepare import ensure_data, ensure_model
    from r3v_ray.tasks import get_task, load_image

    cfg = load_config(args.config, args.set)
    model_path, data_dir = ensure_model(cfg), ensure_data(cfg)
    task = get_task(cfg.task.name, **cfg.task.params)
    records = list(task.read(data_dir, "test"))
    engine = create_engine("hf", model_path)
    reqs = [GenerationRequest(task.cot_prompt(r), load_image(r.image, r.id), r.id) for r in records]
    outs = engine.generate(reqs, SamplingParams(max_new_tokens=cfg.evaluation.max_new_tokens))
    correct = sum(task.score(o.texts[0], r.answer)[1] for o, r in zip(outs, records))
    print(f"zero-shot CoT Test@1 of the untrained model: {100 * correct / len(records):.2f}% on {len(records)} questions")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="r3v", description="R3V self-training with reflection for vision-language models, on Ray."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("build-tiny-model", help="build the tiny random Qwen2-VL model (local tokenizer, no hub)")
    p.add_argument("--out", required=True, help="output directory (a Hugging Face model directory)")
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_build_tiny_model)

    p = sub.add_parser("make-data", help="write the built-in synthetic task (jsonl + png images)")
    p.add_argument("--out", required=True)
    p.add_argument("--num-train", type=int, default=200)
    p.add_argument("--num-test", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_make_data)

    p = sub.add_parser("demo", help="run the demo on the built-in task (see configs/demo.yaml)")
    p.add_argument("--config", default="configs/demo.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("config", help="validate a config and print it with every default filled in")
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. rounds=1")
    p.set_defaults(func=_cmd_show_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from r3v_ray.config import ConfigError
    from r3v_ray.tasks.base import RecordError

    try:
        return args.func(args)
    except (ConfigError, RecordError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
