"""Figures and one Markdown page from the output of ``jaxinterp explain``.

    jaxinterp report --explain runs/brain3d_32/explain --out runs/brain3d_32/report

Group maps are drawn as orthogonal slices (nilearn ``plot_stat_map``) with a symmetric
diverging colour scale centred on 0 (red = positive, blue = negative; the range is the
99th percentile of ``|map|`` in the brain mask, voxels below a tenth of it are left
transparent), over the MNI152 template when the maps are in MNI space (a synthetic cohort
of `jaxinterp.synth3d`) and over the mean input image otherwise. All slices of a page cut
through the same point, the peak of the group truth (or of the simulator's first group
map). The logit figure follows the paper's Fig. 4: per direction, the scans sorted by
their raw logit, with the logits of their simulations and of the simulations sent back.
Figures are drawn on matplotlib's Agg canvas (no display needed, pyplot state untouched).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxinterp.atomic import publish, write_json, write_text
from train.explain import MANIFEST, MARKER

__all__ = ["HELP", "add_arguments", "report", "run"]

REPORT_MANIFEST = "report.json"
REPORT_KIND = "jaxinterp-report"
PAGE = "index.md"
_COLORMAP = "RdBu_r"
_THRESHOLD_FRACTION = 0.1  # voxels below this fraction of the colour range are transparent

# Map keys of explain.json's "files" drawn on the page: (key, title), in page order.
_SIMULATOR_MAPS = (
    ("log_volume_change_inject_mean", "controls, disease injected: mean log volume change"),
    ("log_volume_change_inject_t", "controls, disease injected: one-sample t"),
    ("log_volume_change_remove_mean", "patients, disease removed: mean log volume change"),
    ("log_volume_change_remove_t", "patients, disease removed: one-sample t"),
)
_REFERENCE_MAPS = (
    ("truth", "group truth: mean patient log volume change"),
    ("intensity_difference", "reference: mean patient - mean control image"),
    ("occlusion_accuracy_drop", "occlusion: drop in accuracy"),
)


def report(
    explain_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    background: str = "auto",
) -> Path:
    """Draws an explain output's group maps and logits and writes a Markdown page.

    Args:
      explain_dir: a complete output of `train.explain.explain`.
      out_dir: the report folder (default ``explain_dir/report``); written into a
        temporary folder and renamed. An existing non-empty folder is refused unless
        ``overwrite``, and even then only when it holds an earlier report.
      overwrite: replace an earlier report at ``out_dir``.
      background: ``"mni"`` (the MNI152 template shipped with nilearn), ``"mean"`` (the
        mean input image on the model grid) or ``"auto"`` (MNI when explain says its maps
        are in MNI space).

    Returns:
      The path of the page, ``out_dir/index.md``.

    Raises:
      FileNotFoundError: ``explain_dir`` is not a complete explain output.
      FileExistsError: ``out_dir`` exists and may not be replaced.
    """
    explain_dir = Path(explain_dir)
    if not (explain_dir / MARKER).is_file() or not (explain_dir / MANIFEST).is_file():
        raise FileNotFoundError(
            f"{explain_dir} is not a complete output of `jaxinterp explain` (no {MARKER})"
        )
    if background not in ("auto", "mni", "mean"):
        raise ValueError(f"background must be 'auto', 'mni' or 'mean', got {background!r}")
    out_dir = Path(os.path.abspath(explain_dir / "report" if out_dir is None else out_dir))
    _check_report_dir(out_dir, overwrite)
    summary = json.loads((explain_dir / MANIFEST).read_text(encoding="utf-8"))
    evaluation = None
    if (explain_dir / "evaluation.json").is_file():
        evaluation = json.loads((explain_dir / "evaluation.json").read_text(encoding="utf-8"))
    if background == "auto":
        background = "mni" if summary.get("space") == "MNI152" else "mean"

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        (tmp / "figures").mkdir()
        figures = _draw_all(explain_dir, tmp / "figures", summary, background)
        page = _page(explain_dir, out_dir, summary, evaluation, figures, background)
        write_text(tmp / PAGE, page)
        write_json(
            tmp / REPORT_MANIFEST,
            {"kind": REPORT_KIND, "explain_dir": str(explain_dir.resolve()), "figures": figures},
        )
        publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / PAGE


def _check_report_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.is_symlink():
        raise FileExistsError(f"{out_dir} is a symbolic link; choose another report folder")
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    if not overwrite:
        raise FileExistsError(
            f"{out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it"
        )
    try:
        manifest = json.loads((out_dir / REPORT_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("kind") != REPORT_KIND:
        raise FileExistsError(
            f"{out_dir} is not a report of `jaxinterp report`; refusing to replace it"
        )


# ------------------------------------------------------------------------------ figures


def _map_list(summary: dict) -> list[tuple[str, str]]:
    files = summary.get("files", {})
    items = [(k, t) for k, t in _SIMULATOR_MAPS if k in files]
    for method in summary.get("methods", []):
        for group in ("control", "patient"):
            key = f"saliency_{method}_{group}_mean"
            if key in files:
                items.append((key, f"{method.replace('_', ' ')}, {group}s: mean (signed)"))
    items += [(k, t) for k, t in _REFERENCE_MAPS if k in files]
    return items


def _draw_all(explain_dir: Path, figures: Path, summary: dict, background: str) -> dict:
    from nilearn import plotting

    files = summary["files"]
    brain = np.asarray(nib.load(explain_dir / files["brain_mask"]).dataobj) > 0
    if background == "mni":
        from nilearn import datasets

        bg_img = datasets.load_mni152_template(resolution=2)
    else:
        bg_img = nib.load(explain_dir / files["mean_image"])
    peak_key = next((k for k in ("truth", *[k for k, _ in _SIMULATOR_MAPS]) if k in files), None)
    cut_coords = None
    if peak_key is not None:
        peak = nib.load(explain_dir / files[peak_key])
        data = np.abs(np.asarray(peak.dataobj, np.float64)) * brain
        if data.max() > 0:
            index = np.unravel_index(np.argmax(data), data.shape)
            cut_coords = tuple(float(c) for c in (peak.affine @ [*index, 1.0])[:3])

    drawn = {"logits": "figures/logits.png"}
    _draw_logits(explain_dir / "scans.csv", figures / "logits.png")
    for key, title in _map_list(summary):
        img = nib.load(explain_dir / files[key])
        data = np.asarray(img.dataobj, np.float64)
        inside = np.abs(data[brain & np.isfinite(data)])
        vmax = float(np.percentile(inside, 99)) if inside.size else 0.0
        if not vmax > 0:
            vmax = float(np.nanmax(np.abs(data))) if np.isfinite(data).any() else 0.0
        if not vmax > 0:  # nothing to colour: draw the background and say so
            vmax, title = 1.0, f"{title} (all zero)"
        fig = Figure(figsize=(9, 3.2))
        FigureCanvasAgg(fig)
        with warnings.catch_warnings():
            # nilearn warns "empty mask" when no voxel passes the threshold.
            warnings.filterwarnings("ignore", message="empty mask", category=UserWarning)
            plotting.plot_stat_map(
                img,
                bg_img=bg_img,
                cut_coords=cut_coords,
                display_mode="ortho",
                figure=fig,
                title=title,
                threshold=_THRESHOLD_FRACTION * vmax,
                symmetric_cbar=True,
                vmax=vmax,
                cmap=_COLORMAP,
                draw_cross=False,
                black_bg=False,
                annotate=True,
            )
        fig.savefig(figures / f"{key}.png", dpi=90)
        drawn[key] = f"figures/{key}.png"
    return drawn


def _read_scans(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _draw_logits(scans_csv: Path, out: Path) -> None:
    """The paper's Fig. 4: raw, simulated and cycled-back logits, scans sorted by raw."""
    rows = _read_scans(scans_csv)
    fig = Figure(figsize=(10, 3.8))
    FigureCanvasAgg(fig)
    panels = [("inject", "controls: disease injected"), ("remove", "patients: disease removed")]
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (task, title) in zip(axes, panels):
        members = [r for r in rows if r["task"] == task]
        members.sort(key=lambda r: float(r["logit_raw"]))
        x = np.arange(len(members))
        for column, style, label in (
            ("logit_raw", dict(color="black", marker="o", ms=3, lw=1), "raw"),
            ("logit_simulated", dict(color="tab:red", marker="o", ms=3, lw=0), "simulated"),
            ("logit_cycled", dict(color="tab:gray", marker="x", ms=3, lw=0), "cycled back"),
        ):
            ax.plot(x, [float(r[column]) for r in members], label=label, **style)
        ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
        ax.set_title(f"{title} (n={len(members)})")
        ax.set_xlabel("scans, sorted by raw logit")
    axes[0].set_ylabel("logit (positive = diseased)")
    axes[0].legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)


# ------------------------------------------------------------------------------ page


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _page(
    explain_dir: Path,
    out_dir: Path,
    summary: dict,
    evaluation: dict | None,
    figures: dict,
    background: str,
) -> str:
    link = lambda p: os.path.relpath(explain_dir / p, out_dir)
    groups = summary.get("groups", {})
    members = summary.get("ensemble") or []
    ensemble = (
        f" and the ensemble members {', '.join(f'`{m}`' for m in members)}, maps averaged"
        if members
        else ""
    )
    lines = [
        "# jaxinterp explanation report\n",
        f"- scan table: `{summary.get('table')}` ({summary.get('n_scans')} scans: "
        f"{groups.get('control', 0)} controls, {groups.get('patient', 0)} patients)",
        f"- models: `{summary.get('model_workdir')}` (simulator "
        f"`{summary.get('simulator_name')}`{ensemble}), model grid "
        f"{summary.get('shape')}",
        f"- explain output: `{explain_dir.resolve()}` ([explain.json]({link(MANIFEST)}), "
        f"[scans.csv]({link('scans.csv')}))",
        "- **log volume change**: `-log det(I + du/dx)` of the simulator's pull-back warp; "
        "positive (red) = the tissue grew, negative (blue) = it shrank.",
        "- Group maps are voxel-wise means (and one-sample t maps) on the model grid: the "
        "scans are taken to be affinely aligned to one template; no non-rigid registration.",
        f"- Background: {'MNI152 template' if background == 'mni' else 'mean input image'}; "
        f"colour scale symmetric about 0 up to the 99th percentile of |map| in the brain; "
        f"voxels below {_THRESHOLD_FRACTION:.0%} of it are transparent.",
    ]
    frame = summary.get("map_frame") or {"inject": "simulated", "remove": "simulated"}
    lines.append(
        "- Where the maps lie: the controls' (disease injected) on "
        + ("their own scans" if frame["inject"] == "input" else "their simulated, diseased images")
        + "; the patients' (disease removed) on "
        + ("their own scans." if frame["remove"] == "input" else "their simulated, healed images.")
    )
    if summary.get("smooth_fwhm_mm"):
        lines.append(
            f"- Every scan's maps were smoothed (Gaussian, FWHM {summary['smooth_fwhm_mm']:g} mm) "
            "before the group maps and the scores; the per-scan files are not."
        )
    if summary.get("grids_differ"):
        lines.append("- **Warning**: the scans' model grids differ; group maps are approximate.")
    lines.append("\n## Logits\n")
    lines.append(f"![logits]({figures['logits']})\n")
    delta = summary.get("config", {}).get("objective", {}).get("delta")
    rows = [
        [
            task,
            s["n"],
            s["mean_raw"],
            s["mean_simulated"],
            s["mean_shift"],
            s["fraction_shift_at_least_delta"],
            s["spearman_raw_simulated"],
            s["mean_abs_cycle_logit_error"],
        ]
        for task, s in summary.get("logits", {}).items()
    ]
    lines.append(
        _table(
            [
                "direction",
                "n",
                "mean raw",
                "mean simulated",
                "mean shift",
                f"shift >= delta ({_fmt(delta, 1)})",
                "Spearman raw/sim.",
                "cycle |error|",
            ],
            rows,
        )
    )
    folding = summary.get("folding_fraction", {})
    lines.append(
        f"Folding (det <= 0): mean fraction {_fmt(folding.get('mean'), 5)}, "
        f"max {_fmt(folding.get('max'), 5)}.\n"
    )

    sections = {"simulator": [], "saliency": [], "reference": []}
    for key, title in _map_list(summary):
        kind = (
            "simulator"
            if key.startswith("log_volume")
            else ("saliency" if key.startswith("saliency") else "reference")
        )
        sections[kind].append(f"![{title}]({figures[key]})\n")
    for kind, heading in (
        ("simulator", "Simulator: log volume change"),
        ("saliency", "Saliency baselines"),
        ("reference", "Truth and references"),
    ):
        if sections[kind]:
            lines.append(f"\n## {heading}\n")
            lines.extend(sections[kind])

    if summary.get("regions"):
        lines.append("\n## Regions\n")
        regions = summary["regions"]
        lines.append(
            f"Model: {regions['model']}. Covariates: "
            f"{', '.join(regions['covariates']) or 'none'}. "
            f"Per-scan values: [regions.csv]({link('regions.csv')}).\n"
        )
        stats = _read_scans(explain_dir / "region_stats.csv")
        stats.sort(key=lambda r: float(r["p"]) if r["p"] else math.inf)
        num = lambda v: float(v) if v else None
        lines.append(
            _table(
                [
                    "region",
                    "voxels",
                    "mean (controls)",
                    "mean (patients)",
                    "beta",
                    "t",
                    "p",
                    "p FDR",
                ],
                [
                    [
                        r["region"],
                        r["n_voxels"],
                        num(r["mean_control"]),
                        num(r["mean_patient"]),
                        num(r["beta"]),
                        num(r["t"]),
                        num(r["p"]),
                        num(r["p_fdr"]),
                    ]
                    for r in stats
                ],
            )
        )

    if evaluation is not None:
        lines.append("\n## Evaluation against the truth\n")
        for name, text in evaluation.get("conventions", {}).items():
            lines.append(f"- `{name}`: {text}")
        lines.append("")
        rows = []
        for name, entry in evaluation["maps"].items():
            subjects = entry.get("subjects", {}).get("ncc_signed", {})
            regions = entry.get("regions", {})
            agree = sum(r["sign_agrees"] for r in regions.values())
            per_scan = "n/a"
            if subjects.get("n"):
                per_scan = f"{_fmt(subjects['mean'])} +- {_fmt(subjects['std'])}"
            where_used = entry.get("sign_where_used")
            rows.append(
                [
                    name,
                    entry.get("n", ""),
                    entry["group"]["ncc_signed"],
                    entry["group"]["ncc_abs"],
                    per_scan,
                    f"{agree}/{len(regions)}" if regions else "n/a",
                    f"{where_used['right']}/{where_used['of']}" if where_used else "n/a",
                ]
            )
        lines.append(
            _table(
                [
                    "map",
                    "n",
                    "group NCC (signed)",
                    "group NCC (abs)",
                    "per-scan NCC (signed, mean +- sd)",
                    "regions with right sign",
                    "right sign where the classifier looks",
                ],
                rows,
            )
        )
        uses = evaluation.get("classifier_uses")
        if uses:
            lines.append(
                "\nWhich truth regions the classifier uses (`classifier_uses`; the convention "
                "above):\n"
            )
            lines.append(
                _table(
                    ["truth region", "patients tested", "logit drop", "fraction of gap", "used"],
                    [
                        [region, u["n"], u["logit_drop"], u["fraction_of_gap"],
                         "yes" if u["used"] else "no"]
                        for region, u in uses.items()
                    ],
                )
            )  # fmt: skip
        lines.append(f"Details: [evaluation.json]({link('evaluation.json')}).\n")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ command


HELP = "draw the group maps and logits of an explain output as PNG figures on one Markdown page"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``jaxinterp report``."""
    parser.add_argument(
        "--explain",
        dest="explain_dir",
        required=True,
        help="the output folder of `jaxinterp explain`",
    )
    parser.add_argument("--out", default=None, help="report folder (default: EXPLAIN/report)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier report at --out"
    )
    parser.add_argument(
        "--background",
        choices=("auto", "mni", "mean"),
        default="auto",
        help="slices over the MNI152 template, the mean input image, or "
        "auto (MNI for a synthetic cohort); default auto",
    )


def run(args: argparse.Namespace) -> dict:
    """Runs ``jaxinterp report`` from parsed arguments."""
    page = report(args.explain_dir, args.out, overwrite=args.overwrite, background=args.background)
    return {"page": str(page)}
