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

from .plots import new_figure, save_png

METHOD_LABELS = {
    "model": "S1 regression (paper)",
    "fusion": "fusion (clear views + S1)",
    "pixel_mean": "per-pixel mean",
    "interpolation": "linear interpolation",
}
SAMPLE_COLUMNS = ("model", "fusion", "pixel_mean", "interpolation")  # after the observation
DELIVERED = {"fusion": "fusion", "paper": "model"}  # params.method -> the estimate in NDVI_gapfree
BASELINES = ("pixel_mean", "interpolation")


# Figure fractions of the scatter figure's margins (room for tick labels, axis titles, the
# suptitle and the colorbars), fixed instead of measured by tight_layout.
SCATTER_MARGINS = dict(left=0.05, right=0.95, bottom=0.12, top=0.86, wspace=0.45)


def _fmt(v, digits=4):
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    return "-" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def metrics_markdown(metrics: pd.DataFrame) -> str:
    """The metrics table (rows split x method) as Markdown."""
    lines = ["| split | method | n | MAE | RMSE | R² | bias | within 1 SE |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for _, r in metrics.iterrows():
        cover = r.get("SE_coverage", np.nan)
        lines.append(f"| {r['split']} | {METHOD_LABELS.get(r['method'], r['method'])} | {_fmt(int(r['n']))} | "
                     f"{_fmt(r['MAE'])} | {_fmt(r['RMSE'])} | {_fmt(r['R2'], 3)} | {_fmt(r['bias'])} | "
                     f"{'-' if not np.isfinite(cover) else f'{100 * cover:.0f} %'} |")
    return "\n".join(lines)


def gap_markdown(by_gap: pd.DataFrame, split: str) -> str:
    """MAE of every estimate per bin of distance to the nearest clear training view, as Markdown."""
    t = by_gap[by_gap.split == split]
    bins = list(dict.fromkeys(t.gap_bin))
    methods = list(dict.fromkeys(t.method))
    mae = t.pivot(index="gap_bin", columns="method", values="MAE")
    n = t[t.method == methods[0]].set_index("gap_bin").n
    lines = ["| days to nearest clear view | n | " + " | ".join(METHOD_LABELS[m] for m in methods) + " |",
             "|---|---:|" + "---:|" * len(methods)]
    for b in bins:
        best = mae.loc[b].idxmin() if mae.loc[b].notna().any() else None
        cells = [f"**{_fmt(mae.loc[b, m])}**" if m == best else _fmt(mae.loc[b, m]) for m in methods]
        lines.append(f"| {b} | {_fmt(int(n[b]))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(metrics: pd.DataFrame, method: str) -> tuple[str, str]:
    """One sentence naming the best estimate on validation, and a warning (or "") when the
    delivered product is worse than a baseline on validation or test."""
    delivered = DELIVERED[method]
    val = metrics[metrics.split == "validation"].set_index("method")["MAE"]
    if val.isna().all():
        return "No validation pixels could be scored (no artificially clouded clear pixel).", ""
    tied = val.index[val <= val.min() + 1e-12]
    best = delivered if delivered in tied else tied[0]  # ties (e.g. no model under the clouds) name the product
    sentence = (f"Best on validation (clear pixels hidden under artificial clouds): {METHOD_LABELS[best]}, "
                f"MAE {val[best]:.4f}; NDVI_gapfree holds the {METHOD_LABELS[delivered]} estimate "
                f"(MAE {val[delivered]:.4f}).")
    worse = []
    for split in ("validation", "test"):
        m = metrics[metrics.split == split].set_index("method")["MAE"]
        for b in BASELINES:
            if np.isfinite(m[delivered]) and m[b] < m[delivered]:
                worse.append(f"{METHOD_LABELS[b]} on {split} ({m[b]:.4f} < {m[delivered]:.4f})")
    warning = ""
    if worse:
        warning = ("> **WARNING: the delivered gap-free NDVI is less accurate than a baseline: "
                   + "; ".join(worse) + ".** Consider `method=\"fusion\"`, a longer period or more "
                   "clear views; do not use it where the baseline is better.")
    return sentence, warning


def scatter_figure(samples: dict[str, np.ndarray], path: Path, *, estimate: str = "fusion",
                   overwrite: bool = False) -> Path:
    """Observed vs estimated NDVI per split (hexbin density), with the 1:1 line and the MAE.

    ``samples``: split -> (n, 5) observation, then the SAMPLE_COLUMNS estimates.
    """
    col = 1 + SAMPLE_COLUMNS.index(estimate)
    splits = [s for s in ("train", "validation", "test") if s in samples]
    fig, axes = new_figure(1, len(splits), figsize=(5.2 * len(splits), 4.4), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        s = samples[split]
        ok = np.isfinite(s[:, 0]) & np.isfinite(s[:, col]) if len(s) else np.zeros(0, bool)
        if ok.sum() > 0:
            obs, pred = s[ok, 0], s[ok, col]
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
        ax.set_ylabel(f"{METHOD_LABELS[estimate]} NDVI")
        ax.set_aspect("equal")
    fig.suptitle(f"Observed vs {METHOD_LABELS[estimate]} NDVI (validation: under artificial clouds)")
    # fixed margins: tight_layout draws the figure once more just to measure it, which was the
    # larger part of the report's time
    fig.subplots_adjust(**SCATTER_MARGINS)
    return save_png(fig, path, dpi=90, overwrite=overwrite)


def gap_figure(by_gap: pd.DataFrame, path: Path, *, overwrite: bool = False) -> Path:
    """MAE of every estimate per bin of distance to the nearest clear training view, one panel per split."""
    splits = list(dict.fromkeys(by_gap.split))
    fig, axes = new_figure(1, len(splits), figsize=(5.6 * len(splits), 3.8), squeeze=False, sharey=True)
    for ax, split in zip(axes[0], splits, strict=True):
        t = by_gap[(by_gap.split == split) & (by_gap.gap_bin != "all")]
        bins = list(dict.fromkeys(t.gap_bin))
        methods = list(dict.fromkeys(t.method))
        width = 0.8 / len(methods)
        for i, m in enumerate(methods):
            v = t[t.method == m].set_index("gap_bin").loc[bins, "MAE"]
            ax.bar(np.arange(len(bins)) + (i - (len(methods) - 1) / 2) * width, v, width, label=METHOD_LABELS[m])
        n = t[t.method == methods[0]].set_index("gap_bin").loc[bins, "n"]
        ax.set_xticks(np.arange(len(bins)), [f"{b}\nn={int(k):,}" for b, k in zip(bins, n, strict=True)], fontsize=8)
        ax.set_xlabel("days to the nearest clear training view")
        ax.set_title(split)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("MAE (NDVI)")
    axes[0, 0].legend(fontsize=8)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.22, top=0.9, wspace=0.08)
    return save_png(fig, path, dpi=90, overwrite=overwrite)


def series_figure(series: dict, path: Path, *, overwrite: bool = False) -> Path:
    """NDVI over time for a few pixels: observed (clear), predicted, gap-free, interpolation."""
    n = len(series.get("y", []))
    fig, axes = new_figure(max(n, 1), 1, figsize=(10, 2.6 * max(n, 1)), sharex=True, squeeze=False)
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
    return save_png(fig, path, dpi=90, overwrite=overwrite)


def write_report(run, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write the Markdown report of an :class:`~optsar_nb.local._pipeline.InfillRun` and its PNGs."""
    from .outputs import atomic_path

    path = Path(path)
    p, meta = run.params, run.metadata
    delivered = DELIVERED[p.method]
    scatter = scatter_figure(run.samples, path.with_name(path.stem + "_scatter.png"), estimate=delivered,
                             overwrite=overwrite)
    series = series_figure(run.series, path.with_name(path.stem + "_series.png"), overwrite=overwrite)
    gaps = gap_figure(run.metrics_by_gap, path.with_name(path.stem + "_gaps.png"), overwrite=overwrite)
    counts = meta["SplitLabel"].value_counts()
    donor = meta.loc[meta["ID"] == run.donor_id, "CLOUD_PERCENTAGE_AOI"]
    sentence, warning = verdict(run.metrics, p.method)
    split_kind = "random" if p.random_split else "time"
    donor_pct = float(donor.iloc[0]) if len(donor) else float("nan")
    out_range, n_pred = run.prediction_out_of_range
    text = f"""# NDVI infilling accuracy report

{sentence}

{warning}

{p.mission}, {p.start} to {p.end} (end exclusive). {len(meta)} optical-SAR pairs
(Sentinel-1 within +-{p.s1_window_days} days): {counts.get('train', 0)} train,
{counts.get('validation', 0)} validation, {counts.get('test', 0)} test (seed {p.seed}, {split_kind} split).
Artificial clouds: the cloud mask of `{run.donor_id}` ({donor_pct:.1f} % cloudy).
NDVI_gapfree: the clear observation where there is one, else the {METHOD_LABELS[delivered]} estimate
(`method="{p.method}"`), never outside [-1, 1]; NDVI_gapfree_SE its standard error (0 where observed).

## Accuracy

Scored pixels: validation = truly clear pixels hidden by the artificial clouds; test = clear
pixels of test pairs. Every estimate is scored on the same pixels from the same training
observations. NDVI units; bias = mean(estimate - observation). The S1 regression is the
paper's fill: where a pixel has no model it falls back to the fusion. "Within 1 SE": share of
errors within one standard error (about 68 % when calibrated).

{metrics_markdown(run.metrics)}

### By distance to the nearest clear training view (MAE; the best in bold)

Validation:

{gap_markdown(run.metrics_by_gap, "validation")}

Test:

{gap_markdown(run.metrics_by_gap, "test")}

![MAE by gap length]({gaps.name})

Every figure of these tables, as CSV: `{run.paths["metrics"].name}` (split, method, gap bin).

## Model

Per-pixel regression: {run.model_pixels:,} AOI pixels have a model; {run.guarded_pixels:,} pixels had fewer than
{p.min_train_samples} clear training samples ({p.min_samples_per_coefficient:g} per coefficient) and
{run.underdetermined_pixels:,} fewer than 9: they have no model and are filled by the fusion.
{run.rank_deficient_pixels:,} pixels had a rank-deficient design (solved by the minimum-norm least squares with
relative cutoff {p.lstsq_rcond:g}). Calibrated S1 predictions outside the physical NDVI range [-1, 1]:
{out_range:,} of {n_pred:,} ({100 * out_range / max(n_pred, 1):.2f} %).

![observed vs estimated]({scatter.name})

![time series]({series.name})

## Run time

| step | seconds |
|---|---:|
""" + "\n".join(f"| {k} | {v:.2f} |" for k, v in run.timings.items()) + "\n"
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path
