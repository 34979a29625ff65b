"""`csd-fast train`: run a training stage from a YAML config plus key=value overrides."""
from __future__ import annotations

import argparse
import json

from .config import ConfigError, load_config


def cmd_train(args: argparse.Namespace) -> int:
    from .trainer import NonFiniteLossError, train  # torch-heavy imports only when training

    try:
        cfg = load_config(args.config, [*args.overrides, *(args.set or [])])
    except ConfigError as err:
        raise SystemExit(f"csd-fast train: config error: {err}")
    try:
        result = train(cfg, resume=args.resume)
    except NonFiniteLossError as err:
        raise SystemExit(f"csd-fast train: {err}")
    print(json.dumps(result, indent=2))
    return 0


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train", help="train a stage (teacher, csd or student)",
        description="Train EDSR with Contrastive Self-Distillation. Settings come from the recipe "
                    "defaults, then --config YAML, then key=value overrides. Runs under torchrun too.")
    p.add_argument("--config", help="YAML file of config keys")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a config override (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in out_dir from last.pt")
    p.set_defaults(func=cmd_train)
    return p
