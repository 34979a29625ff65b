"""`csd-fast train`: run a training stage from a YAML config plus key=value overrides."""
from __future__ import annotations

import argparse
import json
import sys

from .config import ConfigError, describe_keys, load_config


def cmd_train(args: argparse.Namespace) -> int:
    from .trainer import train  # torch-heavy imports only when training

    # A bad key or value, or a data path that does not hold a dataset, is a usage error
    # (exit 2); a run that fails (a non-finite loss) reaches csd_fast.cli.main (exit 1).
    try:
        cfg = load_config(args.config, [*args.overrides, *(args.set or [])])
        result = train(cfg, resume=args.resume)
    except ConfigError as err:
        print(f"csd-fast train: config error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="train a stage (teacher, csd or student)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train EDSR with Contrastive Self-Distillation. Settings come from the recipe\n"
                    "defaults, then --config YAML, then key=value overrides. Runs under torchrun too.",
        epilog=describe_keys())
    p.add_argument("--config", help="YAML file of config keys")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a config override (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in out_dir from last.pt")
    p.set_defaults(func=cmd_train)
    return p
