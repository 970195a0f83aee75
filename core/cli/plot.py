"""``amber plot``: learning curves of runs, one line per run, from their ``progress.csv``.

Each point is marked, so a run of one iteration shows; a run with no point to draw (no row yet,
or no number in the metric's column) is refused, naming it, rather than drawn as an empty chart.
The image is never written into a checkpoint. Needs matplotlib (``pip install 'amber-rl[plot]'``),
imported inside the command and drawn with the Agg backend (no display needed).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click

from amber.cli.base import LOCATION, AmberCliError, LocalPath, checkpoint_place, cli

__all__ = ["plot", "read_curve"]

#: The size of the figure: 8 x 5 inches at 100 dpi, an 800 x 500 PNG.
FIGSIZE, DPI = (8.0, 5.0), 100
X_AXES = ("num_env_steps_sampled_lifetime", "training_iteration")


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def read_curve(run_dir: Path | str, x: str, metric: str) -> tuple[list[float], list[float]]:
    """The points ``(x, metric)`` of a run's ``progress.csv``, one per row.

    :param run_dir: the run's directory (holding ``progress.csv``), or the fsspec URL of a run
        whose checkpoints went to remote storage (``amber train --storage``).
    :param x: the column of the x axis.
    :param metric: the column of the y axis.
    :raises AmberCliError: no ``progress.csv``, it lacks one of the columns (the message lists them),
        or it is not CSV as amber writes it (a field over the csv module's 128 KiB limit: amber's
        fields are numbers and checkpoint paths).
    """
    import csv
    import io

    from amber.storage import Remote, transfer

    if isinstance(run_dir, str):
        remote = Remote(run_dir)
        path: Any = f"{remote.url}/progress.csv"
        if "progress.csv" not in remote.listing():
            raise AmberCliError(f"{run_dir} has no progress.csv (train with amber train --storage)")
        text = transfer(remote, "reading", lambda: remote.fs.cat_file(remote.key("progress.csv"))).decode()
    else:
        path = run_dir / "progress.csv"
        if not path.is_file():
            raise AmberCliError(f"{run_dir} has no progress.csv (train with amber train or "
                                "Algorithm.train())")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise AmberCliError(f"{path} is not a progress.csv amber wrote (not UTF-8 text: {e})") from None
    try:
        with io.StringIO(text, newline="") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            missing = [c for c in (x, metric) if c not in columns]
            if missing:
                raise AmberCliError(f"{path} has no column {', '.join(map(repr, missing))}; "
                                    f"columns: {', '.join(columns)}")
            rows = list(reader)
    except csv.Error as e:  # a field over csv's limit (128 KiB), a stray quote...: not amber's rows
        raise AmberCliError(f"{path} is not a progress.csv amber wrote ({e})") from None
    return [_number(r[x]) for r in rows], [_number(r[metric]) for r in rows]


def _check_drawable(run: Path | str, xs: list[float], ys: list[float], x: str, metric: str) -> None:
    """Refuse a curve without a single point to draw (finite on both axes): an empty chart would
    look like a drawing of it.

    :raises AmberCliError: naming the run and the metric.
    """
    if any(math.isfinite(a) and math.isfinite(b) for a, b in zip(xs, ys, strict=True)):
        return
    why = ("its progress.csv has no row yet (no iteration ended)" if not ys else
           f"none of the {len(ys)} row(s) of its progress.csv has a number in both {metric!r} and "
           f"{x!r} (choose another --metric or --x)")
    raise AmberCliError(f"nothing to draw for {run}: {why}")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise AmberCliError("amber plot needs matplotlib: pip install 'amber-rl[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@cli.command()
@click.argument("run_dirs", nargs=-1, required=True, type=LOCATION)
@click.option("-o", "--output", type=LocalPath(lambda url: "write the image locally, then copy it there"),
              default=Path("plot.png"), show_default=True,
              help="The image to write (its suffix picks the format: .png, .svg, .pdf).")
@click.option("--metric", default="episode_return_mean", show_default=True, help="The column to draw.")
@click.option("--x", "x_axis", type=click.Choice(X_AXES), default=X_AXES[0], show_default=True,
              help="The column of the x axis.")
def plot(run_dirs: tuple[Path, ...], output: Path, metric: str, x_axis: str) -> None:
    """Draw METRIC against env steps for each RUN_DIR's progress.csv; print the image's path."""
    plt = _pyplot()
    from matplotlib.backend_bases import FigureCanvasBase

    known = FigureCanvasBase.get_supported_filetypes()
    if output.suffix.lstrip(".").lower() not in known:
        raise AmberCliError(f"cannot write {output}: its suffix picks the image format, one of "
                            f"{', '.join('.' + k for k in sorted(known))}")
    where = checkpoint_place(output.parent)
    if where is not None:
        raise AmberCliError(f"refusing to write {output}: {output.parent} is {where}, whose checkpoint.json "
                            "would not list it (`amber verify` would then fail on it); choose a directory "
                            "outside it")
    curves = {run: read_curve(run, x_axis, metric) for run in run_dirs}
    for run, (xs, ys) in curves.items():
        _check_drawable(run, xs, ys, x_axis, metric)
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    try:
        for run, (xs, ys) in curves.items():
            label = run.rsplit("/", 1)[-1] if isinstance(run, str) else run.resolve().name
            ax.plot(xs, ys, marker="o", markersize=3, label=label)
        ax.set_xlabel(x_axis)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
        output.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(output, dpi=DPI)
    finally:
        plt.close(fig)
    click.echo(str(output))
