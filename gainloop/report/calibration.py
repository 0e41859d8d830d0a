"""The report of a twin calibration: one HTML page with PNG figures (``gainloop twin calibrate --report DIR``).

``write_calibration_report(result, runs, out_dir)`` writes ``out_dir/index.html`` with:

* ``run_NN.png`` -- per source run: measured integrated counts (counts/s) versus the pump's fluence
  readback (uJ/cm^2) for fluence scans, versus the stripe length (um) for VSL scans, with the
  calibrated twin's and the presets' curves at the same acquisitions, and the normalised residuals
  (measured - calibrated) / sd below; for a pump-probe run, d(alpha)/alpha0 versus delay (ps) per
  delay scan's pump <N> and versus <N> for the threshold series, measured and twin, and the residuals; for a
  DFB lasing run, integrated counts/s versus the pump's fluence readback (uJ/cm^2), measured, calibrated and
  presets, with the device's lasing threshold of the calibrated twin and of the presets (``twin.dfb``) marked
  and listed under the runs' table;
* ``correlation.png`` -- the correlation matrix of the fitted parameters;
* a table of the parameters (preset, estimate +- standard error, unit, the data's own constraint)
  and the fit quality, and the identifiability notes.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from gainloop.report.figures import save_figure
from twin.calibration import LasingRun, TaRun

__all__ = ["lasing_thresholds", "write_calibration_report"]


def _draw_ta_run(run, calibrated, preset, residuals):
    """A pump-probe run: d(alpha)/alpha0 versus delay for each delay scan's pump level, and versus the pump's
    <N> for the readings at one delay (the threshold series), measured and twin."""
    levels, counts = np.unique(run.pump_excitons, return_counts=True)
    scans = [lv for lv, n in zip(levels, counts, strict=True) if n >= 5]
    series = ~np.isin(run.pump_excitons, scans)

    def draw(fig):
        top, mid, bottom = fig.subplots(3, 1, height_ratios=[3, 2, 1])
        for level in scans:
            sel = run.pump_excitons == level
            order = np.argsort(run.delay_ps[sel])
            t = run.delay_ps[sel][order]
            (line,) = top.plot(t, calibrated[sel][order], "-", label=f"twin, <N> {level:.3g}")
            top.plot(t, run.signal[sel][order], "o", ms=3, color=line.get_color(), label=f"measured, <N> {level:.3g}")
            if preset is not None:
                top.plot(t, preset[sel][order], "--", color="0.5", lw=0.8)
        top.set_xlabel("delay (ps)")
        top.set_ylabel("d(alpha)/alpha0")
        top.set_title(f"{run.plan} {run.uid[:8]}  (doping {run.doping:g} e/dot; dashed: presets)")
        top.legend(fontsize=7)
        if np.any(series):
            order = np.argsort(run.pump_excitons[series])
            n = run.pump_excitons[series][order]
            mid.semilogx(n, run.signal[series][order], "o", ms=3, label="measured")
            mid.semilogx(n, calibrated[series][order], "-", label="calibrated twin")
            mid.set_xlabel("pump <N> (excitons/dot), at one delay")
            mid.set_ylabel("d(alpha)/alpha0")
            mid.legend(fontsize=7)
        bottom.plot(np.arange(residuals.size), residuals, "o", ms=2)
        bottom.axhline(0.0, color="0.5", lw=0.8)
        bottom.set_xlabel("reading")
        bottom.set_ylabel("residual / sd")

    return draw


def _draw_run(run, measured, calibrated, preset, residuals):
    is_vsl = run.plan == "vsl_scan"
    x = run.stripe_length_um if is_vsl else run.fluence_uJ_cm2
    order = np.argsort(x)

    def draw(fig):
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        rate = 1.0 / run.exposure_s
        top.loglog(x, measured * rate, "o", ms=4, label="measured")
        top.loglog(x[order], (calibrated * rate)[order], "-", label="calibrated twin")
        if preset is not None:
            top.loglog(x[order], (preset * rate)[order], "--", color="0.5", label="presets")
        top.set_ylabel("integrated counts/s")
        top.set_title(f"{run.plan} {run.uid[:8]}  (doping {run.doping:g} e/dot)")
        top.legend(fontsize=8)
        bottom.semilogx(x, residuals, "o", ms=3)
        bottom.axhline(0.0, color="0.5", lw=0.8)
        bottom.set_ylabel("residual / sd")
        bottom.set_xlabel("stripe length (um)" if is_vsl else "pump fluence (uJ/cm^2)")

    return draw


def _device(presets, run: LasingRun):
    sample = presets.get(run.sample)
    if run.grating_period_nm is not None and sample.dfb is not None:
        dfb = sample.dfb.model_copy(update={"grating_period_nm": run.grating_period_nm})
        sample = sample.model_copy(update={"dfb": dfb})
    return sample


def lasing_thresholds(result, run: LasingRun) -> tuple[float, float]:
    """The device's lasing threshold (uJ/cm^2; ``twin.dfb.dfb_threshold_uJ_cm2`` at the run's doping, undamaged)
    of the calibrated twin and of the presets the fit started from (the calibrated ones with every fitted
    parameter back at its preset value)."""
    from twin.dfb import dfb_threshold_uJ_cm2
    from twin.presets import with_parameters

    before = with_parameters(result.presets, {e.name: e.preset for e in result.estimates})
    return tuple(float(dfb_threshold_uJ_cm2(_device(p, run), run.doping)) for p in (result.presets, before))


def _draw_lasing_run(run, calibrated, preset, residuals, thresholds):
    x = run.fluence_uJ_cm2
    order = np.argsort(x)
    f_cal, f_pre = thresholds

    def draw(fig):
        top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
        rate = 1.0 / run.exposure_s
        top.loglog(x, run.counts * rate, "o", ms=4, label="measured")
        top.loglog(x[order], (calibrated * rate)[order], "-", label="calibrated twin")
        if preset is not None:
            top.loglog(x[order], (preset * rate)[order], "--", color="0.5", label="presets")
        top.axvline(f_cal, color="C1", lw=0.8, ls=":", label=f"threshold, calibrated {f_cal:.4g} uJ/cm^2")
        top.axvline(f_pre, color="0.5", lw=0.8, ls=":", label=f"threshold, presets {f_pre:.4g} uJ/cm^2")
        top.set_ylabel("integrated counts/s")
        angle = ", ".join(f"{a:g}" for a in np.unique(run.analyser_angle_deg))
        top.set_title(f"{run.plan} {run.uid[:8]}  (DFB, doping {run.doping:g} e/dot, analyser {angle} deg)")
        top.legend(fontsize=7)
        bottom.semilogx(x, residuals, "o", ms=3)
        bottom.axhline(0.0, color="0.5", lw=0.8)
        bottom.set_ylabel("residual / sd")
        bottom.set_xlabel("pump fluence (uJ/cm^2)")

    return draw


def _draw_correlation(names, corr):
    def draw(fig):
        ax = fig.subplots()
        im = ax.imshow(corr, vmin=-1, vmax=1, cmap="RdBu_r")
        short = [n.split(".", 1)[1] for n in names]
        ax.set_xticks(range(len(names)), short, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), short, fontsize=8)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{corr[i, j]:.2f}", ha="center", va="center", fontsize=7)
        fig.colorbar(im, ax=ax, label="correlation")

    return draw


def write_calibration_report(result, runs, out_dir: Path, *, title: str = "") -> Path:
    """Write the page and its figures into ``out_dir`` (created); returns the page's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    lasing_notes = []
    for i, run in enumerate(runs):
        name = f"run_{i:02d}.png"
        args = (result.predicted[run.uid], result.predicted_preset.get(run.uid), result.residuals[run.uid])
        if isinstance(run, TaRun):
            draw = _draw_ta_run(run, *args)
        elif isinstance(run, LasingRun):
            thresholds = lasing_thresholds(result, run)
            draw = _draw_lasing_run(run, *args, thresholds)
            lasing_notes.append(
                f"<li>{html.escape(run.uid[:8])}: DFB lasing threshold of the twin {thresholds[0]:.4g} uJ/cm^2 "
                f"(presets: {thresholds[1]:.4g} uJ/cm^2)</li>"
            )
        else:
            draw = _draw_run(run, run.counts, *args)
        save_figure(draw, out / name)
        figures.append(name)
    names = [e.name for e in result.estimates]
    if names:
        save_figure(_draw_correlation(names, result.correlation), out / "correlation.png")
    rows = "".join(
        f"<tr><td>{html.escape(e.name)}</td><td>{e.preset:.5g}</td><td>{e.value:.5g} &plusmn; {e.error:.2g}</td>"
        f"<td>{html.escape(e.unit)}</td><td>&plusmn;{100 * min(e.data_log_sd, 99):.2g} %</td></tr>"
        for e in result.estimates
    )
    notes = "".join(f"<li>{html.escape(f)}</li>" for f in result.flags) or "<li>none</li>"
    runs_rows = "".join(
        f"<tr><td>{html.escape(r.uid)}</td><td>{html.escape(r.plan)}</td><td>{result.residuals[r.uid].size}</td>"
        f"<td>{float(np.sqrt(np.mean(result.residuals[r.uid] ** 2))):.3g}</td></tr>"
        for r in runs
    )
    imgs = "".join(f'<img src="{f}" alt="{f}">' for f in figures)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>twin calibration: {html.escape(result.sample)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px}} img{{max-width:640px;margin:4px}}</style></head>
<body><h1>Twin calibration: {html.escape(result.sample)}</h1>
<p>{html.escape(title)}</p>
<p>{result.n_points} acquisitions from {len(runs)} runs; chi2 {result.chi2:.1f} for {result.dof} degrees of freedom
(reduced {result.reduced_chi2:.3f}); {result.iterations} iterations.</p>
<h2>Parameters (MAP &plusmn; standard error, Laplace)</h2>
<table><tr><th>parameter</th><th>preset</th><th>calibrated</th><th>unit</th><th>from the data alone</th></tr>
{rows}</table>
<h2>What these runs cannot pin down</h2><ul>{notes}</ul>
<h2>Correlation of the fitted parameters</h2>
{'<img src="correlation.png" alt="correlation">' if names else "<p>no parameters</p>"}
<h2>Runs: measured versus the calibrated twin</h2>
<table><tr><th>run</th><th>plan</th><th>acquisitions</th><th>rms residual / sd</th></tr>{runs_rows}</table>
{f"<ul>{''.join(lasing_notes)}</ul>" if lasing_notes else ""}
{imgs}
</body></html>
"""
    path = out / "index.html"
    path.write_text(page)
    return path
