"""Accuracy report of an infilling run: Markdown plus two PNG figures, written atomically.

Per split (train = in-sample clear pixels of training pairs, validation = the artificially
clouded, truly clear pixels of validation pairs, test = every clear pixel of test pairs) the
report gives MAE, RMSE, R^2, bias (mean prediction - observation) and n for the model and for
two baselines scored on the same pixels from the same training observations: the per-pixel
mean of training NDVI, and linear interpolation in time between a pixel's training
observations. Figures: observed vs predicted scatter per split, and NDVI time series of a few
pixels (observed, predicted, gap-free).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .plots import _pyplot

METHOD_LABELS = {
    "model": "S1 regression (this run)",
    "pixel_mean": "per-pixel mean",
    "interpolation": "linear interpolation",
}


# Figure fractions of the scatter figure's margins (room for tick labels, axis titles, the
# suptitle and the colorbars), fixed instead of measured by tight_layout.
SCATTER_MARGINS = dict(left=0.05, right=0.95, bottom=0.12, top=0.86, wspace=0.45)


def _fmt(v, digits=4):
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    return "-" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def metrics_markdown(metrics: pd.DataFrame) -> str:
    """The metrics table (rows split x method) as Markdown."""
    lines = ["| split | method | n | MAE | RMSE | R² | bias |", "|---|---|---:|---:|---:|---:|---:|"]
    for _, r in metrics.iterrows():
        lines.append(f"| {r['split']} | {METHOD_LABELS.get(r['method'], r['method'])} | {_fmt(int(r['n']))} | "
                     f"{_fmt(r['MAE'])} | {_fmt(r['RMSE'])} | {_fmt(r['R2'], 3)} | {_fmt(r['bias'])} |")
    return "\n".join(lines)


def scatter_figure(samples: dict[str, np.ndarray], path: Path, *, overwrite: bool = False) -> Path:
    """Observed vs predicted NDVI per split (hexbin density), with the 1:1 line and the MAE."""
    from .local.stack import atomic_path

    plt = _pyplot()
    splits = [s for s in ("train", "validation", "test") if s in samples]
    fig, axes = plt.subplots(1, len(splits), figsize=(5.2 * len(splits), 4.4), squeeze=False)
    for ax, split in zip(axes[0], splits):
        s = samples[split]
        ok = np.isfinite(s[:, 0]) & np.isfinite(s[:, 1]) if len(s) else np.zeros(0, bool)
        if ok.sum() > 0:
            obs, pred = s[ok, 0], s[ok, 1]
            lo = float(min(np.percentile(obs, 0.5), np.percentile(pred, 0.5), 0.0))
            hi = float(max(np.percentile(obs, 99.5), np.percentile(pred, 99.5), 1.0))
            hb = ax.hexbin(obs, pred, gridsize=40, extent=(lo, hi, lo, hi), mincnt=1, cmap="viridis", bins="log")
            fig.colorbar(hb, ax=ax, fraction=0.046, pad=0.04).set_label("sampled pixels per cell")
            ax.plot([lo, hi], [lo, hi], color="crimson", lw=1, label="1:1")
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
            ax.text(0.03, 0.97, f"n = {ok.sum():,} sampled\nMAE = {np.abs(pred - obs).mean():.3f}",
                    transform=ax.transAxes, va="top", fontsize=9, bbox=dict(facecolor="white", alpha=0.8, lw=0))
            ax.legend(loc="lower right", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no pixels", ha="center", transform=ax.transAxes)
        ax.set_title(split)
        ax.set_xlabel("observed NDVI")
        ax.set_ylabel("predicted NDVI")
        ax.set_aspect("equal")
    fig.suptitle("Observed vs predicted NDVI (validation: under artificial clouds)")
    # fixed margins: tight_layout draws the figure once more just to measure it, which was the
    # larger part of the report's time
    fig.subplots_adjust(**SCATTER_MARGINS)
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return Path(path)


def series_figure(series: dict, path: Path, *, overwrite: bool = False) -> Path:
    """NDVI over time for a few pixels: observed (clear), predicted, gap-free, interpolation."""
    from .local.stack import atomic_path

    plt = _pyplot()
    n = len(series.get("y", []))
    fig, axes = plt.subplots(max(n, 1), 1, figsize=(10, 2.6 * max(n, 1)), sharex=True, squeeze=False)
    start = pd.Timestamp(series.get("start", "1970-01-01")) if n else None
    for i, ax in enumerate(axes[:, 0][:n]):
        t = start + pd.to_timedelta(series["days"], unit="D")
        clear = series["state"][:, i] == 1
        artificial = clear & (series["labels"] == "validation") & bool(series["artificial"][i])
        ax.plot(t, series["pred"][:, i], color="tab:blue", lw=1, marker=".", ms=4, label="predicted (calibrated)")
        ax.plot(t, series["gapfree"][:, i], color="tab:green", lw=1.6, alpha=0.7, label="gap-free")
        ax.plot(t, series["interpolation"][:, i], color="grey", lw=0.8, ls="--", label="interpolation baseline")
        ax.scatter(t[clear & ~artificial], series["obs"][clear & ~artificial, i], color="black", s=14, zorder=3,
                   label="observed (clear)")
        if artificial.any():
            ax.scatter(t[artificial], series["obs"][artificial, i], facecolor="none", edgecolor="crimson", s=40,
                       zorder=4, label="observed, hidden by artificial cloud")
        ax.set_ylabel("NDVI")
        ax.set_title(f"pixel row {series['y'][i]}, column {series['x'][i]}", fontsize=10)
        ax.grid(alpha=0.3)
    if n:
        axes[0, 0].legend(loc="upper left", fontsize=8, ncol=3, framealpha=0.9)
    else:
        axes[0, 0].text(0.5, 0.5, "no pixel with a prediction", ha="center", transform=axes[0, 0].transAxes)
    rows = max(n, 1)  # margins in inches (for ticks, labels, titles) whatever the figure's height
    fig.subplots_adjust(left=0.07, right=0.96, bottom=0.45 / (2.6 * rows), top=1 - 0.3 / (2.6 * rows),
                        hspace=0.9 / 2.6)
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return Path(path)


def write_report(run, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write the Markdown report of an :class:`~optsar_nb.local._pipeline.InfillRun` and its PNGs."""
    from .local.stack import atomic_path

    path = Path(path)
    scatter = scatter_figure(run.samples, path.with_name(path.stem + "_scatter.png"), overwrite=overwrite)
    series = series_figure(run.series, path.with_name(path.stem + "_series.png"), overwrite=overwrite)
    p, meta = run.params, run.metadata
    counts = meta["SplitLabel"].value_counts()
    donor = meta.loc[meta["ID"] == run.donor_id, "CLOUD_PERCENTAGE_AOI"]
    val = run.metrics[(run.metrics.split == "validation")].set_index("method")
    verdict = ""
    if len(val) and np.isfinite(val.loc["model", "MAE"]):
        best = val["MAE"].idxmin()
        verdict = (f"On the validation pixels (under artificial clouds) the model's MAE is "
                   f"{val.loc['model', 'MAE']:.4f} against {val.loc['pixel_mean', 'MAE']:.4f} for the per-pixel mean "
                   f"and {val.loc['interpolation', 'MAE']:.4f} for interpolation: best is "
                   f"{METHOD_LABELS[best]}.")
    split_kind = "random" if p.random_split else "time"
    donor_pct = float(donor.iloc[0]) if len(donor) else float("nan")
    text = f"""# NDVI infilling accuracy report

{p.mission}, {p.start} to {p.end} (end exclusive). {len(meta)} optical-SAR pairs
(Sentinel-1 within +-{p.s1_window_days} days): {counts.get('train', 0)} train,
{counts.get('validation', 0)} validation, {counts.get('test', 0)} test (seed {p.seed}, {split_kind} split).
Artificial clouds: the cloud mask of `{run.donor_id}` ({donor_pct:.1f} % cloudy).

## Accuracy

Scored pixels: train = clear pixels of training pairs (in-sample); validation = truly clear
pixels hidden by the artificial clouds; test = clear pixels of test pairs. NDVI units;
bias = mean(prediction - observation). Baselines use the same training observations and pixels.
On train pixels both are in-sample (interpolation passes through its own inputs, so its train
MAE is 0 by construction): compare methods on validation and test.

{metrics_markdown(run.metrics)}

{verdict}

Regression: {run.rank_deficient_pixels:,} pixels had a rank-deficient design (solved by the
minimum-norm least squares with relative cutoff {p.lstsq_rcond:g}); {run.underdetermined_pixels:,} AOI
pixels had fewer than 9 training samples and no model (their cloudy pixels stay empty).

![observed vs predicted]({scatter.name})

![time series]({series.name})

## Run time

| step | seconds |
|---|---:|
""" + "\n".join(f"| {k} | {v:.2f} |" for k, v in run.timings.items()) + "\n"
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
