"""Campaign reports people look at: one HTML page with PNG figures, from the catalog alone.

``write_report(catalog, campaign_uid, out_dir)`` reads a campaign back with the reader
``gainloop campaign resume`` and ``status`` use (``gainloop.records.read_campaign``: one
``TrialRecord`` per trial), reads each trial's stored ``primary`` stream, and writes
``out_dir/index.html`` with:

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

The package: ``trials`` (each trial record with its run), ``figures`` (one ``draw_*`` per
figure and the GP posterior), ``page`` (the HTML and writing it).
"""

from __future__ import annotations

import html
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gainloop.campaign import CampaignConfig, stored_campaign
from gainloop.catalog import masked
from gainloop.report import figures as plots
from gainloop.report import page as webpage
from gainloop.report.page import ReportError
from gainloop.report.trials import report_trials

__all__ = ["Report", "ReportError", "build_report", "write_report"]


@dataclass(frozen=True)
class Report:
    """What ``build_report`` wrote: the page, its figures (PNG paths, in page order) and its notes."""

    index: Path
    figures: tuple[Path, ...]
    notes: tuple[str, ...] = ()


def writable_dir(out_dir: str | Path) -> Path:
    """``out_dir`` created if need be and checked writable (``ReportError`` saying so if not)."""
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
        hint = (
            " The embedded catalog can be open in one process at a time: if another gainloop process "
            "(a running campaign?) has it open, write the report when it ends, or use a catalog server (--catalog)."
            if getattr(catalog, "uri", None) is None
            else ""
        )
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ReportError(
            masked(f"the catalog at {catalog.location} could not serve the campaign's data: {first}.{hint}")
        ) from None


def _num(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _prior_table(cfg: CampaignConfig, records, notes: list[str]) -> str:
    """The twin prior's threshold per completed trial beside the measured one (``campaign.prior_residuals``)."""
    from gainloop.campaign import prior_residuals

    done = [
        r for r in records if r.status == "completed" and math.isfinite(r.outcome.get("threshold_uJ_cm2", math.nan))
    ]
    prior = prior_residuals(cfg, done)
    if prior.get("error"):
        return webpage.note_html(prior["error"], notes)
    rms = prior.get("rms_residual_ln")
    head = (
        f"<p>The campaign's prior: the twin of {html.escape(str(prior['source']))} "
        f"[{html.escape(str(prior.get('sample')))}], before the campaign refitted it; per completed trial the "
        "twin's threshold at its stripe length and measured doping, and ln(measured / twin)"
        + (f" (rms {rms:.3f})" if rms is not None else "")
        + ".</p>"
    )
    rows = "".join(
        f"<tr><td>{row['trial_index']}</td><td>{row['stripe_length_um']:.0f}</td><td>{row['doping']:.2f}</td>"
        f"<td>{row['threshold_uJ_cm2']:.1f}</td>"
        f"<td>{_num(row['predicted_threshold_uJ_cm2'], '.1f')}</td>"
        f"<td>{_num(row['residual_ln'], '+.3f')}</td></tr>"
        for row in prior["trials"]
    )
    return (
        head + "<table class='prior'><tr><th>trial</th><th>stripe um</th><th>doping e/dot</th>"
        "<th>measured uJ/cm^2</th><th>twin uJ/cm^2</th><th>ln(measured / twin)</th></tr>" + rows + "</table>"
    )


def _build(catalog, campaign_uid: str, out_dir: str | Path) -> Report:
    stored = stored_campaign(catalog, campaign_uid)  # CampaignError if unknown
    cfg = CampaignConfig.from_dict(stored.config)
    out = writable_dir(out_dir)
    runs = list(stored.trial_runs)
    trials = report_trials(stored)
    best = min((t for t in trials if math.isfinite(t.threshold)), key=lambda t: t.threshold, default=None)

    sections: list[str] = []
    figures: list[Path] = []
    notes: list[str] = []

    def figure(name: str, draw, alt: str, caption: str) -> str:
        path = out / name
        plots.save_figure(draw, path)
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
                lambda fig: plots.draw_best(fig, trials, cfg),
                "best threshold versus lab hours",
                "Best ASE threshold measured so far (line, with the best trial's error bar) and each completed "
                "trial's own threshold (points) versus the lab hours used when the trial ended; failed and "
                "infeasible trials are marked along the bottom.",
            )
        )
    else:
        sections.append(
            webpage.note_html("No trial has a measured threshold yet: nothing to plot against lab time.", notes)
        )

    # GP posterior
    sections.append("<h2>GP posterior over stripe length and doping</h2>")
    post, why = plots.gp_posterior(cfg, [r.result for r in stored.records], trials)
    if post is not None:
        notes.extend(post["messages"])
        sections.append(
            figure(
                "gp_posterior.png",
                lambda fig: plots.draw_posterior(fig, post, trials, best),
                "GP posterior of the threshold over stripe length and doping with the proposed points",
                html.escape(post["caption"]),
            )
        )
    else:
        sections.append(webpage.note_html(why, notes))

    # input-output curves
    sections.append("<h2>Input-output curves</h2><div class='grid'>")
    for t in trials:
        sections.append(
            figure(
                f"io_trial_{t.record.trial_index:03d}.png",
                lambda fig, t=t: plots.draw_io(fig, t),
                f"input-output curve of trial {t.record.trial_index}",
                f"Trial {t.record.trial_index} ({html.escape(t.record.status)})",
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
                lambda fig: plots.draw_vsl(fig, vsl_runs),
                "VSL series with their fits",
                "Output at the ASE peak versus stripe length for each vsl_scan run of the campaign, with the "
                "VSL fit I(l) = A (exp(g l) - 1) + B l over the window the analysis used.",
            )
        )
    else:
        sections.append(
            webpage.note_html("No VSL (vsl_scan) run was measured in this campaign: no net modal gain to show.", notes)
        )

    # spectra of the best trial
    sections.append("<h2>Emission spectra of the best trial</h2>")
    if best is not None and best.run is not None and "primary" in best.run:
        spectra = plots.best_spectra(best)
        if spectra is not None:
            notes.extend(spectra["notes"])
            sections.append(
                figure(
                    "spectra_best.png",
                    lambda fig: plots.draw_spectra(fig, spectra, best),
                    "emission spectra of the best trial below, at and above threshold",
                    html.escape(
                        f"Trial {best.record.trial_index}: spectra read below, at and above its threshold "
                        f"({best.threshold:.1f} uJ/cm^2). " + " ".join(spectra["notes"])
                    ),
                )
            )
        else:
            sections.append(
                webpage.note_html(f"Trial {best.record.trial_index} has no unsaturated spectrum to show.", notes)
            )
    else:
        sections.append(webpage.note_html("No completed trial with a threshold: no spectra to show.", notes))

    if cfg.prior is not None:
        sections.append("<h2>Twin prior versus the data</h2>")
        sections.append(_prior_table(cfg, stored.records, notes))

    sections.append("<h2>Trials</h2>")
    sections.append(webpage.trials_table(trials))

    header = webpage.header_html(
        catalog, campaign_uid, cfg, trials, best, stored.lab_time_used_s, stored.films_made, stored.record_runs
    )
    page = webpage.page_html(campaign_uid, header, sections)
    page = webpage.scrub_secrets(page, catalog)
    index = out / "index.html"
    webpage.write_page(index, page)
    return Report(index=index, figures=tuple(figures), notes=tuple(notes))
