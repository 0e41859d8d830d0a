"""Campaign reports people look at: one HTML page with PNG figures, from the catalog alone.

``write_report(catalog, campaign_uid, out_dir)`` reads a campaign back the way
``gainloop campaign resume`` does (``gainloop.campaign.rebuild_trials``: the record
runs' streams and the trial runs' start/stop documents and analysis streams), reads
each trial's stored ``primary`` stream, and writes ``out_dir/index.html`` with:

* ``best_threshold.png`` -- best ASE threshold so far (uJ/cm^2, with its error bar)
  versus the lab hours used, every completed trial's own threshold beside it;
* ``io_trial_NNN.png`` -- one input-output curve per trial: output (counts/s) versus the
  measured pump fluence (uJ/cm^2), log-log, unsaturated reads only, the fitted threshold
  as a vertical line with its error band; failed and infeasible trials carry their reason;
* ``gp_posterior.png`` -- the nested optimiser's GP posterior of the threshold (median and
  the standard deviation of ln threshold) over stripe length (um, log) x doping
  (electrons/dot), refitted on the campaign's trials by the optimiser itself, with
  every proposed point numbered by its trial index;
* ``vsl.png`` -- the campaign's ``vsl_scan`` runs with their fits (only if it has any: the
  page says so when none were measured);
* ``spectra_best.png`` -- emission spectra of the best trial below, at and above its
  threshold, on the wavelength axis the spectrometer recorded as configuration in the
  primary stream's descriptor (pixel index, said so, if a run lacks it);
* a table of the trials: index, stripe length, doping, status, threshold with error,
  reason and run uid.

Matplotlib draws with the Agg canvas on ``Figure`` objects it does not register
anywhere (no pyplot, no rcParams change): nothing leaks into the caller's plotting
state. No secret reaches the page: the catalog's location is shown masked, and every
API key known to the process (``--api-key`` and the environment's) is scrubbed from
the HTML before it is written.
"""

from __future__ import annotations

import html
import json
import math
import os
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.errors import GainloopError
from gainloop.campaign import CampaignConfig, rebuild_trials
from gainloop.replay import stream_columns

__all__ = ["Report", "ReportError", "build_report", "write_report"]

#: Environment variables that may hold an API key (never written into a report).
_SECRET_ENV = ("TILED_API_KEY", "GAINLOOP_TILED_API_KEY", "TILED_SINGLE_USER_API_KEY")
_DPI = 100
_GRID = 60  # GP posterior grid points per axis
_STATUS_MARK = {"completed": ("o", "C0"), "infeasible": ("s", "C1"), "failed": ("X", "C3"), "abandoned": ("x", "0.5")}


class ReportError(GainloopError):
    """A report cannot be written (output folder not writable...)."""


@dataclass(frozen=True)
class Report:
    """What ``build_report`` wrote: the page, its figures (PNG paths, in page order) and its notes."""

    index: Path
    figures: tuple[Path, ...]
    notes: tuple[str, ...] = ()


@dataclass
class _Trial:
    index: int
    params: dict
    status: str
    outcome: dict
    reason: str
    run: object | None = None  # BlueskyRun of the measurement, None if it never opened
    lab_h: float = math.nan  # lab hours used when the trial ended
    proposal: dict = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def threshold(self) -> float:
        v = self.outcome.get("threshold_uJ_cm2")
        return float(v) if v is not None and self.status == "completed" else math.nan

    @property
    def threshold_err(self) -> float:
        v = self.outcome.get("threshold_err_uJ_cm2")
        return float(v) if v is not None else math.nan

    def primary(self) -> dict[str, np.ndarray] | None:
        """The run's stored primary stream (read once)."""
        if "primary" not in self._cache:
            self._cache["primary"] = _primary(self.run)
        return self._cache["primary"]

    @property
    def run_uid(self) -> str:
        return self.run.start["uid"] if self.run is not None else ""


# ------------------------------------------------------------------ entry points
def write_report(catalog, campaign_uid: str, out_dir: str | Path) -> Path:
    """Write the campaign's report into ``out_dir``; return the path of its ``index.html``.

    Raises ``CampaignError`` for an unknown campaign uid, ``ReportError`` when ``out_dir``
    cannot be created or written.
    """
    return build_report(catalog, campaign_uid, out_dir).index


def build_report(catalog, campaign_uid: str, out_dir: str | Path) -> Report:
    """``write_report`` returning what was written (``Report``: index, figures, notes)."""
    import httpx

    try:
        return _build(catalog, campaign_uid, out_dir)
    except httpx.HTTPError as exc:
        from gainloop.catalog import _masked

        hint = (
            " The embedded catalog can be open in one process at a time: if another gainloop process "
            "(a running campaign?) has it open, write the report when it ends, or use a catalog server (--catalog)."
            if getattr(catalog, "uri", None) is None
            else ""
        )
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ReportError(
            _masked(f"the catalog at {catalog.location} could not serve the campaign's data: {first}.{hint}")
        ) from None


def _build(catalog, campaign_uid: str, out_dir: str | Path) -> Report:
    cfg, history, used_s, films = rebuild_trials(catalog, campaign_uid)  # CampaignError if unknown
    out = _writable(out_dir)
    runs = _campaign_runs(catalog, campaign_uid)
    records = sorted((r for r in runs if r.start.get("plan_name") == "campaign"), key=lambda r: r.start["time"])
    trials = _trials(history, runs, records)
    best = min((t for t in trials if math.isfinite(t.threshold)), key=lambda t: t.threshold, default=None)

    sections: list[str] = []
    figures: list[Path] = []
    notes: list[str] = []

    def figure(name: str, draw, alt: str, caption: str) -> str:
        path = out / name
        _save(draw, path)
        figures.append(path)
        return (
            f'<figure><img src="{html.escape(name)}" alt="{html.escape(alt)}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )

    # best threshold versus lab time
    sections.append("<h2>Best threshold versus lab time</h2>")
    if any(math.isfinite(t.threshold) for t in trials):
        sections.append(
            figure(
                "best_threshold.png",
                lambda fig: _draw_best(fig, trials, cfg),
                "best threshold versus lab hours",
                "Best ASE threshold measured so far (line, with the best trial's error bar) and each completed "
                "trial's own threshold (points) versus the lab hours used when the trial ended; failed and "
                "infeasible trials are marked along the bottom.",
            )
        )
    else:
        sections.append(_note("No trial has a measured threshold yet: nothing to plot against lab time.", notes))

    # GP posterior
    sections.append("<h2>GP posterior over stripe length and doping</h2>")
    post, why = _posterior(cfg, history, trials)
    if post is not None:
        notes.extend(post["messages"])
        sections.append(
            figure(
                "gp_posterior.png",
                lambda fig: _draw_posterior(fig, post, trials, best),
                "GP posterior of the threshold over stripe length and doping with the proposed points",
                html.escape(post["caption"]),
            )
        )
    else:
        sections.append(_note(why, notes))

    # input-output curves
    sections.append("<h2>Input-output curves</h2><div class='grid'>")
    for t in trials:
        sections.append(
            figure(
                f"io_trial_{t.index:03d}.png",
                lambda fig, t=t: _draw_io(fig, t),
                f"input-output curve of trial {t.index}",
                f"Trial {t.index} ({html.escape(t.status)})",
            )
        )
    sections.append("</div>")

    # VSL
    sections.append("<h2>Variable stripe length (VSL)</h2>")
    vsl_runs = sorted((r for r in runs if r.start.get("plan_name") == "vsl_scan"), key=lambda r: r.start["time"])
    if vsl_runs:
        sections.append(
            figure(
                "vsl.png",
                lambda fig: _draw_vsl(fig, vsl_runs),
                "VSL series with their fits",
                "Output at the ASE peak versus stripe length for each vsl_scan run of the campaign, with the "
                "VSL fit I(l) = A (exp(g l) - 1) + B l over the window the analysis used.",
            )
        )
    else:
        sections.append(_note("No VSL (vsl_scan) run was measured in this campaign: no net modal gain to show.", notes))

    # spectra of the best trial
    sections.append("<h2>Emission spectra of the best trial</h2>")
    if best is not None and best.run is not None and "primary" in best.run:
        spectra = _spectra(best)
        if spectra is not None:
            notes.extend(spectra["notes"])
            sections.append(
                figure(
                    "spectra_best.png",
                    lambda fig: _draw_spectra(fig, spectra, best),
                    "emission spectra of the best trial below, at and above threshold",
                    html.escape(
                        f"Trial {best.index}: spectra read below, at and above its threshold "
                        f"({best.threshold:.1f} uJ/cm^2). " + " ".join(spectra["notes"])
                    ),
                )
            )
        else:
            sections.append(_note(f"Trial {best.index} has no unsaturated spectrum to show.", notes))
    else:
        sections.append(_note("No completed trial with a threshold: no spectra to show.", notes))

    sections.append("<h2>Trials</h2>")
    sections.append(_table(trials))

    header = _header(catalog, campaign_uid, cfg, trials, best, used_s, films, records)
    page = _page(campaign_uid, header, sections)
    page = _scrub(page, catalog)
    index = out / "index.html"
    _write_text(index, page)
    return Report(index=index, figures=tuple(figures), notes=tuple(notes))


# ------------------------------------------------------------------ reading the campaign
def _writable(out_dir: str | Path) -> Path:
    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".gainloop-write-test-"):
            pass
    except OSError as exc:
        raise ReportError(
            f"cannot write the report to {out}: {exc.strerror or exc}; give --out a folder you can write to"
        ) from None
    return out.resolve()


def _campaign_runs(catalog, campaign_uid: str) -> list:
    from tiled.queries import Key

    return list(catalog.client.search(Key("start.campaign_uid") == campaign_uid).values())


def _loads(value, default):
    try:
        out = json.loads(value)
    except (TypeError, ValueError):
        return default
    return out if out is not None else default


def _trials(history: list[dict], runs: list, records: list) -> list[_Trial]:
    """One ``_Trial`` per rebuilt trial, with its run (the completed one, else the latest) and lab time."""
    by_index: dict[int, list] = {}
    for run in runs:
        start = run.start
        if start.get("plan_name") in ("ase_fluence_scan", "ase_point") and "trial_index" in start:
            by_index.setdefault(int(start["trial_index"]), []).append(run)
    lab_end: dict[int, float] = {}
    run_uid: dict[int, str] = {}
    proposals: dict[int, dict] = {}
    for rec in records:
        if "proposals" in rec:
            cols = stream_columns(rec["proposals"])
            for k in range(len(cols["trial_index"])):
                proposals[int(cols["trial_index"][k])] = {
                    "params": _loads(cols["params"][k], {}),
                    "predicted": _loads(cols["predicted"][k], {}),
                }
        if "outcomes" in rec:
            cols = stream_columns(rec["outcomes"])
            for k in range(len(cols["trial_index"])):
                idx = int(cols["trial_index"][k])
                lab_end[idx] = float(cols["lab_time_used_s"][k]) / 3600.0
                run_uid[idx] = str(cols["run_uid"][k])
    out = []
    for h in history:
        idx = h["trial_index"]
        candidates = sorted(by_index.get(idx, []), key=lambda r: r.start["time"])
        run = next((r for r in candidates if r.start["uid"] == run_uid.get(idx)), None)
        if run is None:
            done = [r for r in candidates if (r.metadata.get("stop") or {}).get("exit_status") == "success"]
            run = (done or candidates or [None])[-1]
        lab_h = lab_end.get(idx, math.nan)
        if not math.isfinite(lab_h) and run is not None:
            start_s = float(run.start.get("lab_time_used_s", 0.0) or 0.0)
            lab_h = (start_s + float(h.get("lab_time_s", 0.0) or 0.0)) / 3600.0
        out.append(
            _Trial(
                index=idx,
                params=dict(h["params"]),
                status=h["status"],
                outcome=dict(h["outcome"]),
                reason=h["reason"],
                run=run,
                lab_h=lab_h,
                proposal=proposals.get(idx, {}),
            )
        )
    return out


def _primary(run) -> dict[str, np.ndarray] | None:
    if run is None or "primary" not in run:
        return None
    try:
        data = stream_columns(run["primary"])
    except KeyError:
        return None
    return data if data.get("pump_fluence") is not None and len(data["pump_fluence"]) else None


def _rates(data: dict[str, np.ndarray], *, at_peak: bool = False) -> np.ndarray:
    from plans._common import counts_per_s

    return counts_per_s(data, at_peak=at_peak)


# ------------------------------------------------------------------ figures
def _save(draw, path: Path) -> None:
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


def _draw_best(fig, trials: list[_Trial], cfg: CampaignConfig) -> None:
    fig.set_size_inches(7.5, 4.2)
    ax = fig.add_subplot()
    timed = sorted((t for t in trials if math.isfinite(t.lab_h)), key=lambda t: (t.lab_h, t.index))
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
    bad = [t for t in timed if t.status != "completed"]
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


def _draw_io(fig, t: _Trial) -> None:
    from matplotlib.ticker import LogFormatter

    fig.set_size_inches(4.6, 3.6)
    ax = fig.add_subplot()
    L, d = t.params.get("stripe_length_um"), t.params.get("doping")
    title = (
        f"trial {t.index}: L = {float(L):.0f} um, n = {float(d):.2f} electrons/dot"
        if L is not None
        else f"trial {t.index}"
    )
    ax.set_title(title, fontsize="medium")
    ax.set_xlabel("measured pump fluence (uJ/cm^2)")
    ax.set_ylabel("output (counts/s, integrated)")
    data = t.primary()
    n_points = 0
    if data is not None:
        fluence = np.asarray(data["pump_fluence"], dtype=float)
        rate = _rates(data)
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
    if t.status != "completed":
        text = textwrap.fill(f"{t.status}: {t.reason or 'no reason recorded'}", 48)
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


def _space(cfg: CampaignConfig, trials: list[_Trial]):
    """The campaign's search space as ``gainloop.campaign`` built it, from the stored config and start documents."""
    from optimizer import SearchSpace

    limits = [float(t.run.start["fluence_limit_uJ_cm2"]) for t in trials if t.run is not None]
    limit = min(limits) if limits else (cfg.fluence_max_uJ_cm2 or 10.0 * cfg.fluence_min_uJ_cm2)
    f_hi = min(limit, cfg.fluence_max_uJ_cm2 or limit)
    if cfg.can_make_films:
        doping: tuple[float, float] | list[float] = (cfg.doping_min, cfg.doping_max)
    else:
        doping = _film_levels(cfg) or sorted({float(t.params["doping"]) for t in trials})
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


def _posterior(cfg: CampaignConfig, history: list[dict], trials: list[_Trial]):
    """(posterior grid, None) from the nested optimiser refitted on the history, or (None, why not)."""
    if cfg.strategy == "joint":
        return None, (
            "This is a joint (fluence, stripe length, doping) campaign: its trials are single acquisitions, "
            "not thresholds, so there is no threshold GP over stripe length x doping to draw."
        )
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
        "relative uncertainty (right). Numbers are trial indices at the proposed points; dashed: the safe-set "
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


def _draw_posterior(fig, post: dict, trials: list[_Trial], best: _Trial | None) -> None:
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
            params = t.proposal.get("params") or t.params
            if "stripe_length_um" not in params or "doping" not in params:
                continue
            x, y = float(params["stripe_length_um"]), float(params["doping"])
            marker, color = _STATUS_MARK.get(t.status, ("o", "k"))
            ax.plot(x, y, marker, ms=7, mfc=color, mec="white", mew=1.0)
            ax.annotate(
                str(t.index),
                (x, y),
                xytext=(5, 4),
                textcoords="offset points",
                fontsize="small",
                color="white",
                fontweight="bold",
            )
        if best is not None:
            ax.plot(best.params["stripe_length_um"], best.params["doping"], "*", ms=16, mfc="none", mec="red", mew=1.5)
    axes[0].set_ylabel("doping (electrons/dot)")


def _vsl_fit_curve(length_um: np.ndarray, rate: np.ndarray):
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


def _draw_vsl(fig, runs: list) -> None:
    """VSL panel: output at the ASE peak (counts/s) versus stripe length (um) per ``vsl_scan`` run, with its fit."""
    fig.set_size_inches(7.5, 4.4)
    ax = fig.add_subplot()
    for k, run in enumerate(runs):
        color = f"C{k % 10}"
        data = _primary(run)
        if data is None or "slit" not in data:
            continue
        length = np.asarray(data["slit"], dtype=float)
        rate = _rates(data, at_peak=True)
        ok = np.isfinite(rate) & (rate > 0) & np.isfinite(length)
        start = run.start
        who = f"{start.get('sample_id', '?')} at {start.get('plan_args', {}).get('fluence_uJ_cm2', math.nan):g} uJ/cm^2"
        ax.plot(length[ok], rate[ok], "o", ms=4, color=color, label=f"{who} (run {start['uid'][:8]})")
        curve, why = _vsl_fit_curve(length[ok], rate[ok])
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


def _spectra(t: _Trial) -> dict | None:
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


def _draw_spectra(fig, spectra: dict, t: _Trial) -> None:
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
    ax.set_title(f"Emission spectra, trial {t.index}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="x-small")


# ------------------------------------------------------------------ the page
def _note(text: str, notes: list[str]) -> str:
    notes.append(text)
    return f"<p class='note'>{html.escape(text)}</p>"


def _fmt(v, spec: str = ".4g") -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return ""
    return format(f, spec) if math.isfinite(f) else ""


def _table(trials: list[_Trial]) -> str:
    head = (
        "<tr><th>trial</th><th>stripe length (um)</th><th>doping (electrons/dot)</th><th>status</th>"
        "<th>threshold (uJ/cm^2)</th><th>lab time at end (h)</th><th>reason</th><th>run uid</th></tr>"
    )
    rows = []
    for t in trials:
        thr = f"{t.threshold:.1f} ± {t.threshold_err:.1f}" if math.isfinite(t.threshold) else ""
        rows.append(
            f"<tr class='{html.escape(t.status)}'><td>{t.index}</td>"
            f"<td>{_fmt(t.params.get('stripe_length_um'), '.0f')}</td>"
            f"<td>{_fmt(t.params.get('doping'), '.2f')}</td><td>{html.escape(t.status)}</td>"
            f"<td>{thr}</td><td>{_fmt(t.lab_h, '.2f')}</td><td>{html.escape(t.reason)}</td>"
            f"<td><code>{html.escape(t.run_uid)}</code></td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _header(catalog, campaign_uid, cfg, trials, best, used_s, films, records) -> str:
    from gainloop.catalog import _masked

    started = records[0].start.get("time") if records else None
    stop = (records[-1].metadata.get("stop") or {}) if records else {}
    items = [
        ("campaign", f"<code>{html.escape(campaign_uid)}</code>"),
        ("strategy", html.escape(f"{cfg.strategy} (seed {cfg.seed})")),
        (
            "devices",
            html.escape(cfg.bench_file or "the digital twin")
            + (f" (twin seed {cfg.twin_seed})" if cfg.bench_file is None and cfg.twin_seed is not None else ""),
        ),
        ("started", html.escape(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))) if started else ""),
        ("trials", f"{len(trials)} ({sum(t.status != 'completed' for t in trials)} failed or infeasible)"),
        ("lab time used", f"{used_s / 3600.0:.2f} h"),
        (
            "lab clock",
            html.escape(str(records[0].start.get("lab_clock") or "not recorded")) if records else "",
        ),
        ("material", html.escape(str(cfg.material or "not recorded"))),
        ("films made", str(len(films))),
        ("last record run", html.escape(stop.get("exit_status", "running or interrupted") if records else "")),
        ("catalog", html.escape(_masked(str(catalog.location)))),
    ]
    if best is not None:
        items.insert(
            2,
            (
                "best threshold",
                html.escape(
                    f"{best.threshold:.1f} ± {best.threshold_err:.1f} uJ/cm^2 at stripe length "
                    f"{best.params['stripe_length_um']:.0f} um, doping {best.params['doping']:.2f} electrons/dot "
                    f"(trial {best.index})"
                ),
            ),
        )
    budgets = {k: v for k, v in cfg.as_dict().items() if k in ("budget_lab_h", "max_trials", "target_threshold_uJ_cm2")}
    items.append(("budgets", html.escape(", ".join(f"{k} = {v}" for k, v in budgets.items()))))
    return "<table class='summary'>" + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in items) + "</table>"


_CSS = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1250px; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; border-bottom: 1px solid #ccc; margin-top: 1.6em; }
figure { margin: 0.5em 0; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.85em; color: #555; max-width: 75em; }
.grid { display: flex; flex-wrap: wrap; gap: 0.5em; } .grid figure { flex: 0 0 auto; }
table { border-collapse: collapse; font-size: 0.85em; } th, td { border: 1px solid #ddd; padding: 0.2em 0.5em; }
th { background: #f3f3f3; text-align: left; } tr.failed td, tr.infeasible td { color: #a33; }
.note { background: #fff8e0; padding: 0.4em 0.8em; border-left: 3px solid #e0b000; }
#image-check { font-size: 0.8em; color: #777; }
"""

# Marks on <body> how many figures decoded (images-ok="N/M"), for a reader or a headless browser.
_IMAGE_CHECK = """
<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  document.body.dataset.imagesOk = ok + "/" + images.length;
  document.getElementById("image-check").textContent = ok + " of " + images.length + " figures loaded";
});
</script>
"""


def _page(campaign_uid: str, header: str, sections: list[str]) -> str:
    title = f"gainloop campaign {campaign_uid}"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{header}\n" + "\n".join(sections) + "\n"
        f"<p id='image-check'></p><p class='note'>Written by gainloop report from the catalog alone.</p>"
        f"{_IMAGE_CHECK}</body></html>\n"
    )


def _secrets(catalog) -> set[str]:
    found = {os.environ.get(name, "") for name in _SECRET_ENV}
    context = getattr(getattr(catalog, "client", None), "context", None)
    try:
        found.add(getattr(context, "api_key", None) or "")
    except Exception:  # a context that cannot tell its key has none to leak here
        pass
    return {s for s in found if isinstance(s, str) and len(s) >= 4}


def _scrub(page: str, catalog) -> str:
    for secret in _secrets(catalog):
        page = page.replace(secret, "***").replace(html.escape(secret), "***")
    return page


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise ReportError(f"cannot write {path}: {exc.strerror or exc}") from None
