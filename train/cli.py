"""The ``jaxinterp`` command.

    jaxinterp train --config synth2d --workdir runs/synth2d      # classifier, then simulator
    jaxinterp train-classifier --config synth2d --workdir runs/synth2d
    jaxinterp train-simulator --config synth2d --workdir runs/synth2d --set objective.delta=8

Errors the user can fix (a missing file, a bad option, a checkpoint of another config, a
non-finite loss) are reported in one line, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from train.config import available_configs


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        required=True,
        help=f"a config name ({', '.join(available_configs())}) or a path to a .py file "
        "whose get_config() returns a TrainConfig",
    )
    parser.add_argument(
        "--workdir",
        required=True,
        help="output folder; running again with the same workdir resumes from its last "
        "checkpoint (classifier in WORKDIR/classifier, simulator in WORKDIR/simulator)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set simulator_optim.steps=200 "
        "--set objective.delta=5 (repeatable; values are Python literals)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxinterp",
        description="Train a classifier and a conditional-convolution simulator that explains "
        "it by warping images between groups (log-volume-change maps).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands = {
        "train": "train the classifier, then the simulator against it",
        "train-classifier": "train the classifier P (Adam, binary cross-entropy)",
        "train-simulator": "train the simulator G against the frozen classifier of WORKDIR",
    }
    for name, help_text in commands.items():
        _add_training_options(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def run(args: argparse.Namespace) -> dict:
    from train import load_config, train_classifier, train_simulator

    config = load_config(args.config, args.overrides)
    summary = {}
    if args.command in ("train", "train-classifier"):
        summary["classifier"] = train_classifier(config, args.workdir)
    if args.command in ("train", "train-simulator"):
        summary["simulator"] = train_simulator(config, args.workdir)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from train.checkpoint import CheckpointMismatchError
    from train.progress import NonFiniteLossError

    try:
        summary = run(args)
    except (FileNotFoundError, ValueError, CheckpointMismatchError, NonFiniteLossError) as err:
        print(f"jaxinterp {args.command}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
