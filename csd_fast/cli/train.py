"""Train EDSR with Contrastive Self-Distillation: one stage (teacher, csd or student) per run.
Settings come from the recipe defaults, then --config YAML, then KEY=VALUE overrides. Runs
under torchrun too (python -m csd_fast.cli train ...). Prints the run's result as JSON."""
from __future__ import annotations

import argparse
import json

from ..train.config import describe_keys

HELP = "train a stage (teacher, csd or student)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = describe_keys()
    parser.add_argument("--config", help="YAML file of config keys")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="a config override (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue the run in out_dir from last.pt")


def run(args: argparse.Namespace) -> None:
    from ..train import load_config, train
    from ..train.run_dir import check_outputs

    cfg = load_config(args.config, [*args.overrides, *(args.set or [])])
    check_outputs(cfg, args.resume, [("the --config file", args.config)])  # train() checks the rest
    print(json.dumps(train(cfg, resume=args.resume), indent=2))
