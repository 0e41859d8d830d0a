"""The report's figures: each ``draw_*`` draws on a Matplotlib ``Figure`` it is given (Agg, no pyplot).

``save_figure`` makes the figure and writes the PNG; ``gp_posterior`` refits the campaign's
nested optimiser for the posterior map. Units: fluence uJ/cm^2, stripe length um, doping
electrons/dot, lab time h.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path

import numpy as np

from core.errors import GainloopError
from gainloop.campaign import CampaignConfig
from gainloop.report.page import ReportError
from gainloop.report.trials import ReportTrial, count_rates, primary_stream

_DPI = 100
_GRID = 60  # GP posterior grid points per axis
_STATUS_MARK = {"completed": ("o", "C0"), "infeasible": ("s", "C1"), "failed": ("X", "C3"), "abandoned": ("x", "0.5")}


def save_figure(draw, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    draw(fig)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=_DPI, metadata={"Software": None})
        os.replace(tmp, path)
    except OSError as exc:
        raise ReportError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        fig.clear()


def _plain_log_labels(axis) -> None:
    """Tick labels of a log axis as plain numbers (200, not 2 x 10^2)."""
    from matplotlib.ticker import LogFormatter

    axis.set_major_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def draw_best(fig, trials: list[ReportTrial], cfg: CampaignConfig) -> None:
    fig.set_size_inches(7.5, 4.2)
    ax = fig.add_subplot()
    timed = sorted((t for t in trials if math.isfinite(t.lab_h)), key=lambda t: (t.lab_h, t.record.trial_index))
    done = [t for t in timed if math.isfinite(t.threshold)]
    ax.errorbar(
        [t.lab_h for t in done],
        [t.threshold for t in done],
        yerr=[t.threshold_err if math.isfinite(t.threshold_err) else 0.0 for t in done],
        fmt="o",
        color="0.6",
        ms=4,
        capsize=2,
        label="trial threshold",
    )
    xs, ys, es = [], [], []
    best = None
    for t in timed:
        if math.isfinite(t.threshold) and (best is None or t.threshold < best.threshold):
            best = t
        if best is not None:
            xs.append(t.lab_h)
            ys.append(best.threshold)
            es.append(best.threshold_err if math.isfinite(best.threshold_err) else 0.0)
    ax.step(xs, ys, where="post", color="C0", lw=2, label="best so far")
    ax.errorbar(xs, ys, yerr=es, fmt="none", ecolor="C0", capsize=3)
    bad = [t for t in timed if t.record.status != "completed"]
    if bad:
        ax.plot(
            [t.lab_h for t in bad],
            [0.02] * len(bad),
            "X",
            color="C3",
            transform=ax.get_xaxis_transform(),
            label="failed / infeasible trial",
        )
    if cfg.target_threshold_uJ_cm2 is not None:
        ax.axhline(cfg.target_threshold_uJ_cm2, color="C2", ls="--", label="target")
    ax.set_yscale("log")
    _plain_log_labels(ax.yaxis)
    ax.set_xlim(left=0.0)
    ax.set_xlabel("lab time used (h)")
    ax.set_ylabel("ASE threshold (uJ/cm^2)")
    ax.set_title("Best threshold versus lab time")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")


def draw_io(fig, t: ReportTrial) -> None:
    from matplotlib.ticker import LogFormatter

    fig.set_size_inches(4.6, 3.6)
    ax = fig.add_subplot()
    L, d = t.record.params.get("stripe_length_um"), t.record.params.get("doping")
    title = (
        f"trial {t.record.trial_index}: L = {float(L):.0f} um, n = {float(d):.2f} electrons/dot"
        if L is not None
        else f"trial {t.record.trial_index}"
    )
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel("measured pump fluence (uJ/cm^2)")
    ax.set_ylabel("output (counts/s, integrated)")
    data = t.primary()
    n_points = 0
    if data is not None:
        fluence = np.asarray(data["pump_fluence"], dtype=float)
        rate = count_rates(data)
        ok = np.isfinite(rate) & (rate > 0) & np.isfinite(fluence) & (fluence > 0)
        n_sat = int(np.sum(np.asarray(data["spectrometer_saturated"]).astype(bool)))
        n_points = int(ok.sum())
        if n_points:
            label = f"{n_points} unsaturated reads" + (f" ({n_sat} saturated left out)" if n_sat else "")
            ax.loglog(fluence[ok], rate[ok], "o", ms=3.5, color="C0", label=label)
    thr, err = t.threshold, t.threshold_err
    if math.isfinite(thr):
        if math.isfinite(err) and err > 0:
            ax.axvspan(max(thr - err, thr * 1e-3), thr + err, color="C1", alpha=0.25, lw=0)
        ax.axvline(thr, color="C1", lw=1.5, label=f"threshold {thr:.1f} ± {err:.1f} uJ/cm^2")
    logs = []
    if n_points or math.isfinite(thr):
        ax.set_xscale("log")
        logs.append(ax.xaxis)
    if n_points:
        ax.set_yscale("log")
        logs.append(ax.yaxis)
    for axis in logs:
        # plain-text labels (the default mathtext costs ~1 s per panel); minor ones when few decades show
        axis.set_major_formatter(LogFormatter(labelOnlyBase=True))
        axis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
    if not n_points:  # no data: no made-up scale
        ax.set_yticks([])
        if not logs:
            ax.set_xticks([])
    if logs:
        ax.legend(fontsize="x-small", loc="upper left")
    if t.record.status != "completed":
        text = textwrap.fill(f"{t.record.status}: {t.record.reason or 'no reason recorded'}", 48)
        ax.text(
            0.5,
            0.5 if not n_points else 0.08,
            text,
            transform=ax.transAxes,
            ha="center",
            va="center" if not n_points else "bottom",
            fontsize="x-small",
            color="C3",
            bbox={"facecolor": "white", "edgecolor": "C3", "alpha": 0.9},
        )
    elif not n_points:
        ax.text(0.5, 0.5, "no stored input-output data", transform=ax.transAxes, ha="center", fontsize="small")
    ax.grid(True, which="both", alpha=0.3)


def _space(cfg: CampaignConfig, trials: list[ReportTrial]):
    """The campaign's search space as ``gainloop.campaign`` built it, from the stored config and start documents."""
    from optimizer import SearchSpace

    limits = [float(t.run.start["fluence_limit_uJ_cm2"]) for t in trials if t.run is not None]
    limit = min(limits) if limits else (cfg.fluence_max_uJ_cm2 or 10.0 * cfg.fluence_min_uJ_cm2)
    f_hi = min(limit, cfg.fluence_max_uJ_cm2 or limit)
    if cfg.can_make_films:
        doping: tuple[float, float] | list[float] = (cfg.doping_min, cfg.doping_max)
    else:
        doping = _film_levels(cfg) or sorted({float(t.record.params["doping"]) for t in trials})
    return SearchSpace(
        fluence_uJ_cm2=(cfg.fluence_min_uJ_cm2, f_hi),
        stripe_length_um=(cfg.stripe_length_min_um, cfg.stripe_length_max_um),
        doping=doping,
        fluence_limit_uJ_cm2=f_hi,
    )


def _film_levels(cfg: CampaignConfig) -> list[float]:
    """Doping levels of the campaign's films, from its bench file (read, never connected)."""
    from devices import load_bench

    try:
        if cfg.bench_file is not None:
            bench = load_bench(cfg.bench_file)
            twin = False
        else:
            from sim.devices import default_twin_bench_path

            bench = load_bench(default_twin_bench_path())
            twin = True
        if cfg.films is not None:
            return sorted({float(bench.library_entry(f).doping) for f in cfg.films})
        entries = [e for e in bench.stage.library if e.kind == "film"]
        if twin:
            new = bench.twin.new_film_preset
            entries = [e for e in entries if (e.preset or new) == new]
        return sorted({float(e.doping) for e in entries})
    except (GainloopError, OSError, ValueError):
        return []


def gp_posterior(cfg: CampaignConfig, history: list[dict], trials: list[ReportTrial]):
    """(posterior grid, None) from the nested optimiser refitted on the history, or (None, why not)."""
    n_done = sum(math.isfinite(t.threshold) for t in trials)
    if n_done < 2:
        return None, f"{n_done} trial(s) with a threshold: the GP needs at least 2 to be drawn."
    from optimizer import NotEnoughDataError, make_optimizer

    space = _space(cfg, trials)
    opt = make_optimizer("nested", space, seed=cfg.seed, batch_size=cfg.batch_size)
    opt.ingest(history)
    u = np.linspace(0.0, 1.0, _GRID)
    l_lo, l_hi = space.stripe_length_um
    d_lo, d_hi = space.doping_bounds
    lengths = np.exp(np.log(l_lo) + u * (np.log(l_hi) - np.log(l_lo)))
    dopings = d_lo + u * (d_hi - d_lo) if d_hi > d_lo else np.full(_GRID, d_lo)
    L, D = np.meshgrid(lengths, dopings, indexing="xy")  # rows: doping, columns: stripe length
    try:
        # the optimiser's own fit (the model its proposals came from), read through its public posterior
        post = opt.posterior(L, D)
    except NotEnoughDataError:
        return None, "fewer than 2 usable thresholds after the optimiser's checks: no GP to draw."
    who = (
        "the campaign's own nested optimiser"
        if cfg.strategy == "nested"
        else (f"the nested optimiser (this campaign's strategy is {cfg.strategy!r})")
    )
    caption = (
        f"GP posterior of {who}, refitted on the {post['n_thresholds']} measured thresholds: median threshold "
        "exp(-mean of -ln threshold) (left) and the posterior standard deviation of ln threshold, about the "
        "relative uncertainty (right), fitted on the films' measured dopings. Numbers are trial indices at "
        "the proposed points (x: where a new film's doping was measured); dashed: the safe-set "
        f"fluence limit ({space.fluence_limit_uJ_cm2:g} uJ/cm^2)."
    )
    return {
        "lengths": lengths,
        "dopings": dopings,
        "threshold": post["threshold_uJ_cm2"],
        "sd_ln": post["sd_ln_threshold"],
        "limit": space.fluence_limit_uJ_cm2,
        "caption": caption,
        "messages": post["messages"][-5:],
    }, None


def draw_posterior(fig, post: dict, trials: list[ReportTrial], best: ReportTrial | None) -> None:
    from matplotlib.colors import LogNorm

    fig.set_size_inches(11.5, 4.6)
    axes = fig.subplots(1, 2, sharey=True)
    L, D = post["lengths"], post["dopings"]
    thr = post["threshold"]
    m = axes[0].pcolormesh(L, D, thr, shading="auto", cmap="viridis", norm=LogNorm(vmin=thr.min(), vmax=thr.max()))
    bar = fig.colorbar(m, ax=axes[0], label="posterior median threshold (uJ/cm^2)")
    _plain_log_labels(bar.ax.yaxis)
    if thr.min() < post["limit"] < thr.max():
        axes[0].contour(L, D, thr, levels=[post["limit"]], colors="white", linestyles="--", linewidths=1)
    s = axes[1].pcolormesh(L, D, post["sd_ln"], shading="auto", cmap="magma")
    fig.colorbar(s, ax=axes[1], label="posterior sd of ln threshold (dimensionless)")
    for ax, title in zip(axes, ("threshold (posterior median)", "uncertainty (posterior sd)"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("stripe length (um)")
        ax.set_title(title, fontsize="medium")
        for t in trials:
            params = t.record.proposal.params or t.record.params
            if "stripe_length_um" not in params or "doping" not in params:
                continue
            x, y = float(params["stripe_length_um"]), float(params["doping"])
            marker, color = _STATUS_MARK.get(t.record.status, ("o", "k"))
            if t.record.doping_measured and abs(t.record.measured_doping - y) > 1e-9:
                # the film came out elsewhere: a line from the request to the measured doping (x)
                ax.plot([x, x], [y, t.record.measured_doping], "-", color="white", lw=0.8, alpha=0.8)
                ax.plot(x, t.record.measured_doping, "x", ms=6, color="white", mew=1.2)
            ax.plot(x, y, marker, ms=7, mfc=color, mec="white", mew=1.0)
            ax.annotate(
                str(t.record.trial_index),
                (x, y),
                xytext=(5, 4),
                textcoords="offset points",
                fontsize="small",
                color="white",
                fontweight="bold",
            )
        if best is not None:
            r = best.record
            ax.plot(
                r.params["stripe_length_um"],
                r.measured_doping if r.doping_measured else r.params["doping"],
                "*",
                ms=16,
                mfc="none",
                mec="red",
                mew=1.5,
            )
    axes[0].set_ylabel("doping (electrons/dot)")


def vsl_fit_curve(length_um: np.ndarray, rate: np.ndarray):
    """The plan's VSL analysis on these points and its curve over the window used, or (None, reason)."""
    from scipy.optimize import nnls

    from plans.analysis import AnalysisError, vsl_gain

    try:
        fit = vsl_gain(length_um, rate)
    except AnalysisError as exc:
        return None, str(exc)
    order = np.argsort(length_um)
    lw, yw = length_um[order][: fit.n_points], rate[order][: fit.n_points]
    l_cm = lw * 1e-4
    # amplitude and the linear (unamplified) term at the fitted gain, same weights as the analysis
    sigma = np.sqrt(np.maximum(yw, 1e-12 * yw.max())) + 1e-3 * yw.max()
    design = np.stack([np.expm1(fit.gain_per_cm * l_cm), l_cm], axis=1) / sigma[:, None]
    (a, b), _ = nnls(design, yw / sigma)
    x = np.linspace(lw.min(), lw.max(), 100)
    return (fit, x, a * np.expm1(fit.gain_per_cm * x * 1e-4) + b * x * 1e-4), ""


def draw_vsl(fig, runs: list) -> None:
    """VSL panel: output at the ASE peak (counts/s) versus stripe length (um) per ``vsl_scan`` run, with its fit."""
    fig.set_size_inches(7.5, 4.4)
    ax = fig.add_subplot()
    for k, run in enumerate(runs):
        color = f"C{k % 10}"
        data = primary_stream(run)
        if data is None or "slit" not in data:
            continue
        length = np.asarray(data["slit"], dtype=float)
        rate = count_rates(data, at_peak=True)
        ok = np.isfinite(rate) & (rate > 0) & np.isfinite(length)
        start = run.start
        who = f"{start.get('sample_id', '?')} at {start.get('plan_args', {}).get('fluence_uJ_cm2', math.nan):g} uJ/cm^2"
        ax.plot(length[ok], rate[ok], "o", ms=4, color=color, label=f"{who} (run {start['uid'][:8]})")
        curve, why = vsl_fit_curve(length[ok], rate[ok])
        if curve is None:
            ax.text(
                0.02,
                0.95 - 0.07 * k,
                f"run {start['uid'][:8]}: no fit: {why[:80]}",
                transform=ax.transAxes,
                fontsize="x-small",
                color=color,
                va="top",
            )
            continue
        fit, x, y = curve
        ax.plot(
            x,
            y,
            "-",
            color=color,
            label=(
                f"fit: g_net = {fit.gain_per_cm:.0f} ± {fit.gain_err_per_cm:.0f} 1/cm (to {fit.max_stripe_um:.0f} um)"
            ),
        )
    ax.set_yscale("log")
    ax.set_xlabel("stripe length (um)")
    ax.set_ylabel("output at the ASE peak (counts/s)")
    ax.set_title("VSL series")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="x-small")


def _wavelength(run, n_pixels: int) -> tuple[np.ndarray | None, str]:
    """The spectrometer's wavelength axis (nm) recorded as configuration in the primary descriptor."""
    for desc in run["primary"].descriptors:
        conf = (desc.get("configuration") or {}).get("spectrometer") or {}
        wl = (conf.get("data") or {}).get("spectrometer_wavelength")
        if wl is not None:
            wl = np.asarray(wl, dtype=float).ravel()
            if wl.size == n_pixels and np.all(np.isfinite(wl)):
                return wl, ""
    return None, (
        "This run's descriptor has no spectrometer wavelength axis (and the bench file's spectrometer "
        "start_nm/stop_nm/pixels are not stored with the run): spectra are shown against the pixel index."
    )


def best_spectra(t: ReportTrial) -> dict | None:
    data = t.primary()
    if data is None or "spectrometer_spectrum" not in data:
        return None
    spectra = np.atleast_2d(np.asarray(data["spectrometer_spectrum"], dtype=float))
    fluence = np.asarray(data["pump_fluence"], dtype=float)
    exposure = np.asarray(data["spectrometer_exposure"], dtype=float)
    saturated = np.asarray(data["spectrometer_saturated"]).astype(bool)
    ok = np.nonzero(~saturated & np.isfinite(fluence) & (fluence > 0) & (exposure > 0))[0]
    if ok.size == 0:
        return None
    thr = t.threshold
    lf = np.log(fluence[ok])
    picks: list[tuple[str, int]] = []
    for label, target, side in (("below", thr / 2, -1), ("at", thr, 0), ("above", 2 * thr, 1)):
        pool = [i for i in range(ok.size) if side == 0 or np.sign(fluence[ok[i]] - thr) == side]
        pool = [i for i in pool if ok[i] not in {p for _, p in picks}]
        if pool:
            i = min(pool, key=lambda i: abs(lf[i] - math.log(target)))
            picks.append((label, int(ok[i])))
    wl, note = _wavelength(t.run, spectra.shape[1])
    return {
        "wavelength": wl,
        "rows": [(label, fluence[k], spectra[k] / exposure[k]) for label, k in picks],
        "threshold": thr,
        "notes": [note] if note else [],
    }


def draw_spectra(fig, spectra: dict, t: ReportTrial) -> None:
    fig.set_size_inches(7.5, 4.4)
    ax = fig.add_subplot()
    wl = spectra["wavelength"]
    for k, (label, f, y) in enumerate(spectra["rows"]):
        x = wl if wl is not None else np.arange(y.size)
        y = np.where(y > 0, y, np.nan)
        ax.plot(
            x,
            y,
            color=f"C{k}",
            lw=1.2,
            label=f"{label} threshold: F = {f:.0f} uJ/cm^2 ({f / spectra['threshold']:.2f} F_th)",
        )
    peaks = [np.nanmax(y) for _, _, y in spectra["rows"] if np.any(y > 0)]
    ax.set_yscale("log")
    if peaks:  # down to 1e-3 of the weakest spectrum's peak: the dark-noise floor below is not of interest
        ax.set_ylim(bottom=1e-3 * min(peaks), top=2.0 * max(peaks))
    ax.set_xlabel("wavelength (nm)" if wl is not None else "spectrometer pixel (index; wavelength not recorded)")
    ax.set_ylabel("spectral intensity (counts/s per pixel)")
    ax.set_title(f"Emission spectra, trial {t.record.trial_index}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="x-small")
