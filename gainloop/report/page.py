"""The report's HTML page: header table, trials table, notes, and writing it with no secret in it."""

from __future__ import annotations

import html
import math
import os
import time
from pathlib import Path

from core.errors import GainloopError
from gainloop.report.trials import ReportTrial

#: Environment variables that may hold an API key (never written into a report).
_SECRET_ENV = ("TILED_API_KEY", "GAINLOOP_TILED_API_KEY", "TILED_SINGLE_USER_API_KEY")


class ReportError(GainloopError):
    """A report cannot be written (output folder not writable...)."""


def note_html(text: str, notes: list[str]) -> str:
    notes.append(text)
    return f"<p class='note'>{html.escape(text)}</p>"


def _fmt(v, spec: str = ".4g") -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return ""
    return format(f, spec) if math.isfinite(f) else ""


def trials_table(trials: list[ReportTrial]) -> str:
    head = (
        "<tr><th>trial</th><th>stripe length (um)</th><th>doping (electrons/dot)</th>"
        "<th>requested doping (electrons/dot)</th><th>measured doping (electrons/dot)</th><th>status</th>"
        "<th>threshold (uJ/cm^2)</th><th>lab time at end (h)</th><th>reason</th><th>run uid</th></tr>"
    )
    rows = []
    for t in trials:
        thr = f"{t.threshold:.1f} ± {t.threshold_err:.1f}" if math.isfinite(t.threshold) else ""
        r = t.record
        measured = f"{r.measured_doping:.3f} ± {r.measured_doping_err:.3f}" if r.doping_measured else ""
        rows.append(
            f"<tr class='{html.escape(t.record.status)}'><td>{t.record.trial_index}</td>"
            f"<td>{_fmt(t.record.params.get('stripe_length_um'), '.0f')}</td>"
            f"<td>{_fmt(t.record.params.get('doping'), '.2f')}</td>"
            f"<td>{_fmt(r.requested_doping, '.2f')}</td><td>{measured}</td><td>{html.escape(t.record.status)}</td>"
            f"<td>{thr}</td><td>{_fmt(t.lab_h, '.2f')}</td><td>{html.escape(t.record.reason)}</td>"
            f"<td><code>{html.escape(t.run_uid)}</code></td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def header_html(catalog, campaign_uid, cfg, trials, best, used_s, films, records) -> str:
    from gainloop.catalog import masked

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
        ("trials", f"{len(trials)} ({sum(t.record.status != 'completed' for t in trials)} failed or infeasible)"),
        ("lab time used", f"{used_s / 3600.0:.2f} h"),
        (
            "lab clock",
            html.escape(str(records[0].start.get("lab_clock") or "not recorded")) if records else "",
        ),
        ("material", html.escape(str(cfg.material or "not recorded"))),
        ("films made", str(len(films))),
        ("films measured", str(len({t.record.sample_id for t in trials if t.record.doping_measured}))),
        ("last record run", html.escape(stop.get("exit_status", "running or interrupted") if records else "")),
        ("catalog", html.escape(masked(str(catalog.location)))),
    ]
    if best is not None:
        items.insert(
            2,
            (
                "best threshold",
                html.escape(
                    f"{best.threshold:.1f} ± {best.threshold_err:.1f} uJ/cm^2 at stripe length "
                    f"{best.record.params['stripe_length_um']:.0f} um, "
                    f"doping {best.record.params['doping']:.2f} electrons/dot "
                    f"(trial {best.record.trial_index})"
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


def page_html(campaign_uid: str, header: str, sections: list[str]) -> str:
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


def scrub_secrets(page: str, catalog) -> str:
    for secret in _secrets(catalog):
        page = page.replace(secret, "***").replace(html.escape(secret), "***")
    return page


def write_page(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise ReportError(f"cannot write {path}: {exc.strerror or exc}") from None
