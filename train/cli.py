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
from pathlib import Path

from train.config import add_config_arguments


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(
        parser,
        workdir_help="output folder; running again with the same workdir resumes from its "
        "last checkpoint (classifier in WORKDIR/classifier, simulator in WORKDIR/simulator, "
        "or WORKDIR/simulator_seedN with --set simulator_seed=N)",
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
        command = sub.add_parser(name, help=help_text, description=help_text)
        _add_training_options(command)
        if name != "train-simulator":
            continue
        command.add_argument(
            "--change-objective",
            action="store_true",
            help="resume a simulator checkpoint written under other objective.* settings and "
            "train on under the ones given (a schedule: e.g. objective.delta=25.0 for 200 steps, "
            "then --set objective.delta=20.0 --set simulator_optim.steps=300 --change-objective); "
            "the checkpoints from then on record the new settings",
        )

    data = sub.add_parser(
        "synth2d",
        help="write the paper's synthetic 2D dataset (.npz) and its recipe (.json)",
        description="Write the paper's synthetic 2D dataset: two groups of 32x32 images with "
        "four Gaussian blobs (sigma 2.5 px), off-diagonal magnitudes U(1,5) in controls and "
        "U(4,8) in patients, diagonal U(1,6), noise 0.002, with each image's ground truth.",
    )
    data.add_argument("--out", required=True, help="output folder (must not hold a dataset)")
    data.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    data.add_argument("--n-per-group", type=int, default=512, help="images per group")

    cohort = sub.add_parser(
        "synth3d",
        help="write a synthetic brain cohort with a known answer (NIfTI, labels, truth maps)",
        description="Build controls and patients from the MNI152 template shipped with "
        "nilearn: random smooth warps and noise per subject, and for patients a disease "
        "warp of known log volume change (regions given as JSON data). Writes NIfTI volumes, "
        "cohort.csv (the scan table for train/explain), the truth maps and the recipe.",
    )
    cohort.add_argument("--out", required=True, help="output folder (must not exist)")
    cohort.add_argument("--n-controls", type=int, default=100, help="controls (default 100)")
    cohort.add_argument("--n-patients", type=int, default=100, help="patients (default 100)")
    cohort.add_argument("--size", type=int, default=32, help="cubic grid edge (default 32)")
    cohort.add_argument(
        "--regions", help="regions JSON (list of name, centre_mm, radius_mm, log_volume_change)"
    )
    cohort.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    reproduce = sub.add_parser(
        "reproduce",
        help="reproduce an experiment of the paper end to end (synth2d)",
        description="Generate the data, train the classifier, the CondConv simulator and "
        "its ablations, score every explanation against the ground truth, write results.json, "
        "results.md and figures.",
    )
    reproduce.add_argument("experiment", choices=["synth2d"], help="which experiment")
    reproduce.add_argument("--out", required=True, help="output folder (resumes if it exists)")
    reproduce.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)"
    )
    reproduce.add_argument(
        "--quick", action="store_true", help="fewer images and steps (a pipeline check)"
    )

    from train import explain, report

    for name, module in (("explain", explain), ("report", report)):
        module.add_arguments(sub.add_parser(name, help=module.HELP, description=module.HELP))
    return parser


def run(args: argparse.Namespace) -> dict:
    if args.command == "synth2d":
        from jaxinterp import synth2d

        params = {"n_per_group": args.n_per_group, "seed": args.seed}
        data = synth2d.make_synth2d(**params)
        paths = synth2d.save_synth2d(args.out, data, synth2d.synth2d_recipe(**params))
        return {"written": [str(p) for p in paths]}
    if args.command == "synth3d":
        from jaxinterp import synth3d

        cohort = synth3d.make_cohort(
            n_controls=args.n_controls,
            n_patients=args.n_patients,
            shape=(args.size,) * 3,
            regions=args.regions,
            seed=args.seed,
        )
        return {"written": str(synth3d.write_cohort(args.out, cohort))}
    if args.command in ("explain", "report"):
        import importlib

        return importlib.import_module(f"train.{args.command}").run(args)
    if args.command == "reproduce":
        from train.reproduce import reproduce_synth2d

        summary = reproduce_synth2d(args.out, seeds=tuple(args.seeds), quick=args.quick)
        return {
            "results": str(Path(args.out) / "results.md"),
            "ncc": {method: row["signed"]["mean"] for method, row in summary["ncc"].items()},
        }

    from train import load_config, train_classifier, train_simulator

    config = load_config(args.config, args.overrides)
    summary = {}
    if args.command in ("train", "train-classifier"):
        summary["classifier"] = train_classifier(config, args.workdir)
    if args.command in ("train", "train-simulator"):
        summary["simulator"] = train_simulator(
            config, args.workdir, change_objective=getattr(args, "change_objective", False)
        )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from train.progress import NonFiniteLossError

    try:
        summary = run(args)
    except (FileNotFoundError, FileExistsError, ValueError, NonFiniteLossError) as err:
        print(f"jaxinterp {args.command}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
