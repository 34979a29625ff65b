"""The csd-fast command line.

    csd-fast demo                      train a small teacher and CSD student on bundled
                                       photographs and compare them with bicubic
    csd-fast info                      what was compiled, torch, devices
    csd-fast smoke [--preset edsr ...] run the model at several widths, both backends,
                                       and report parameters, agreement and time
    csd-fast eval --data DIR ... --scale S [--checkpoint CKPT] ...
                                       PSNR/SSIM (Y channel, crop = scale) per dataset,
                                       the model beside bicubic
    csd-fast upscale IMAGE_VIDEO_OR_DIR ... -o OUT --checkpoint CKPT
                                       write upscaled PNGs and videos
    csd-fast train --config run.yaml [KEY=VALUE ...] [--resume]
                                       teacher pre-training, joint CSD, student baseline
    csd-fast export CHECKPOINT --width R --format FORMAT -o FILE
                                       the student as a standalone slim EDSR

Each command is a module of this package with the same three parts: HELP (its line in
`csd-fast --help`), add_arguments(parser) and run(args). run returns on success and raises
on failure; main() turns what it raises into one error line and the exit status.

Exit status, for every command: 0 on success; 1 when the run itself failed or was stopped
(a non-finite training loss, backends that disagree in `smoke`, a failure of the machine
such as running out of memory or disk); 2 for a usage or input error (a bad flag, a bad
config key or value, a missing or unreadable file, an output that would replace a file, an
optional package that is not installed),
the code argparse also uses for a bad flag. Errors are one line on stderr, naming the problem.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# the order of `csd-fast --help`; each name is a module here
COMMANDS = ("demo", "info", "smoke", "eval", "upscale", "train", "export")
RUN_FAILED, USAGE_ERROR = 1, 2
# Exceptions that mean the input or the command line was wrong (exit 2); other RuntimeErrors
# and OSErrors mean the run failed (exit 1).
USAGE_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, IsADirectoryError,
                NotADirectoryError, PermissionError, ImportError)  # ImportError: an optional extra


def command_module(name: str):
    return importlib.import_module(f"{__name__}.{name}")


class Parser(argparse.ArgumentParser):
    """argparse with its errors in the form of every other error: one line on stderr,
    `csd-fast <cmd>: error: ...`, exit status 2, without the usage block (--help has it)."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand's parser; building it imports no torch, so --help answers at once.
    parser.commands maps each command name to its own parser."""
    parser = Parser(prog="csd-fast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = {}
    for name in COMMANDS:
        module = command_module(name)
        doc = (module.__doc__ or "").strip()
        command = sub.add_parser(name, help=module.HELP, description=doc or module.HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        parser.commands[name] = command
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status follows the module docstring's convention."""
    # torch's CPU allocator then asks for transparent huge pages for large tensors: a
    # 1080p frame's whole-image tensors otherwise cost more in page faults on first touch
    # than the copies that fill them (read once, when torch first allocates)
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # said by the command's parser, so the line names the command
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        command_module(args.command).run(args)
    except USAGE_ERRORS as err:
        return _error(args, err, USAGE_ERROR)
    except (RuntimeError, OSError) as err:  # e.g. a non-finite loss, out of memory, a full disk
        return _error(args, err, RUN_FAILED)
    return 0


def _error(args: argparse.Namespace, message: object, code: int) -> int:
    print(f"csd-fast {args.command}: error: {message}", file=sys.stderr)
    return code
