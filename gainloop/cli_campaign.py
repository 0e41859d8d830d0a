"""``gainloop campaign run|resume|status``, ``demo`` and ``report``: closed-loop campaigns and their results.

A campaign runs on the bench of ``--twin`` / ``--bench FILE`` / the config's [bench] file into
the catalog, with a progress line on stderr; Ctrl+C or SIGTERM end it cleanly and print the
``gainloop campaign resume`` command that continues it. ``status`` and ``report`` read a
campaign from the catalog alone.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from core.errors import GainloopError
from core.protocols import STRATEGIES
from gainloop.cli_common import (
    BenchFileOption,
    BudgetHoursOption,
    ConfigOption,
    DataDirOption,
    JsonOption,
    MaxTrialsOption,
    OptimiserSeedOption,
    TargetOption,
    TwinOption,
    bench_command,
    bench_file_choice,
    bluesky_prints_to_stderr,
    check_budget_hours,
    command_errors,
    command_group,
    load_config,
    opened_catalog,
    print_json,
    reads_catalog,
    with_error,
    with_help,
)

__all__ = ["campaign_app", "demo", "report_cmd"]

campaign_app = command_group("Closed-loop campaigns that minimise the lasing threshold.")

_console = Console()
_err = Console(stderr=True)


def _campaign_progress(json_out: bool, budget_h: float | None, max_trials: int | None):
    """A rich progress line on stderr (nothing in --json mode): trials (of the trial budget), lab hours of
    the lab-time budget, failures, the best threshold so far and an estimate of the wall time left."""
    if json_out:
        return None, None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]campaign[/]"),
        BarColumn(),
        TextColumn("trial {task.fields[trials]}"),
        TextColumn("{task.fields[lab]} lab h"),
        TextColumn("failed {task.fields[failures]}"),
        TextColumn("best {task.fields[best]}"),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=_err,
    )
    # the bar follows whichever budget is nearer to being spent
    budgets = [b for b in (budget_h, max_trials) if b is not None]

    def fields(summary: dict | None) -> dict:
        trials = summary["trials"] if summary else 0
        lab = summary["lab_hours"] if summary else 0.0
        best = (summary or {}).get("best")
        return {
            "trials": f"{trials}/{max_trials}" if max_trials is not None else f"{trials}",
            "lab": f"{lab:.1f}/{budget_h:g}" if budget_h is not None else f"{lab:.1f}",
            "failures": summary["failures"] if summary else 0,
            "best": (
                f"{with_error(best['threshold_uJ_cm2'], best.get('threshold_err_uJ_cm2'))} uJ/cm^2" if best else "-"
            ),
        }

    task = progress.add_task("campaign", total=1.0 if budgets else None, **fields(None))

    def update(summary: dict) -> None:
        shares = []
        if budget_h is not None:
            shares.append(summary["lab_hours"] / budget_h)
        if max_trials is not None:
            shares.append(summary["trials"] / max_trials)
        progress.update(task, completed=min(max(shares, default=0.0), 1.0), **fields(summary))

    return progress, update


def _print_campaign(summary: dict, json_out: bool) -> None:
    keys = ("campaign_uid", "best", "lab_hours", "trials", "failures", "stopped_by", "material", "lab_clock")
    keys += ("films_made", "films_measured", "failed_trials", "prior", "warm_start")
    out = {k: summary.get(k) for k in keys if k in summary}
    if json_out:
        print_json(out)
        return
    best = out.get("best")
    _console.print(
        f"campaign {out['campaign_uid']}: {out['trials']} trials, {out['failures']} failed, "
        f"{out['lab_hours']:.2f} lab hours" + (f", stopped by {out['stopped_by']}" if out.get("stopped_by") else "")
    )
    if best:
        _console.print(
            f"best: threshold {with_error(best['threshold_uJ_cm2'], best['threshold_err_uJ_cm2'])} uJ/cm^2 at stripe "
            f"{best['stripe_length_um']:.0f} um, doping {best['doping']:.2f} electrons/dot"
            + (f" (requested {best['requested_doping']:.2f})" if best.get("requested_doping") is not None else "")
            + f" (trial {best['trial_index']})"
        )
    if out.get("films_measured") is not None:
        _console.print(f"films measured: {out['films_measured']}")
    if out.get("lab_clock"):
        _console.print(f"lab time read from {out['lab_clock']}")
    warm = out.get("warm_start")
    if warm:
        sources = [c[:8] for c in warm["campaigns"]] + [f"runs where {q}" for q in warm.get("queries", [])]
        _console.print(f"warm start: {warm['completed_trials']} completed trials of {'; '.join(sources)}")
    prior = out.get("prior")
    if prior:
        rms = prior.get("rms_residual_ln")
        _console.print(
            f"twin prior: {prior['source']} [{prior.get('sample', '?')}]"
            + (f"; rms ln(measured / twin) {rms:.3f}" if rms is not None else "")
            + (f"; {prior['error']}" if prior.get("error") else "")
        )
        for row in prior.get("trials") or ():
            if row["residual_ln"] is not None:
                _console.print(
                    f"  trial {row['trial_index']}: L {row['stripe_length_um']:.0f} um, doping {row['doping']:.2f}: "
                    f"{row['threshold_uJ_cm2']:.1f} measured vs {row['predicted_threshold_uJ_cm2']:.1f} uJ/cm^2 "
                    f"twin (ln ratio {row['residual_ln']:+.3f})"
                )
    for failed in out.get("failed_trials") or ():
        _console.print(f"trial {failed['trial_index']} {failed['status']}: {failed['reason']}")


def _run_campaign_cli(
    overrides: dict,
    twin: bool,
    bench: Path | None,
    json_out: bool,
    catalog_args: dict,
    *,
    report_dir: Path | None = None,
) -> dict:
    """Config file + command-line options (``catalog_args``: the catalog's and ``config``, as
    ``reads_catalog`` gives them) -> a campaign in the catalog (with a progress bar)."""
    from gainloop.campaign import run_campaign

    with command_errors(ValueError):
        conf = load_config(catalog_args["config"])
        bench_file = bench_file_choice(twin, bench, conf.bench.file)
        strategy = overrides.get("strategy")
        if strategy is not None and strategy not in STRATEGIES:
            raise GainloopError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
        check_budget_hours(overrides.get("budget_lab_h"))
        cfg = conf.campaign_config(bench_file=str(bench_file) if bench_file is not None else None, **overrides)
        if twin:  # --twin wins over the config's [bench] file, as in measure and qserver start
            cfg = dataclasses.replace(cfg, bench_file=None)
        progress, update = _campaign_progress(json_out, cfg.budget_lab_h, cfg.max_trials)
        with opened_catalog(**catalog_args, conf=conf) as cat:
            if progress is not None:
                progress.start()
            try:
                with bluesky_prints_to_stderr(json_out):
                    summary = run_campaign(cat, cfg, progress=update, exit_on_interrupt=True)
            finally:
                if progress is not None:
                    progress.stop()
            if report_dir is not None:
                from gainloop.report import write_report

                uid = summary["campaign_uid"]
                summary["report"] = str(write_report(cat, uid, report_dir / uid))
    return summary


def _campaign_uid(cat, given: str) -> str:
    """The campaign uid ``given`` names (whole, or an unambiguous prefix of it)."""
    return cat.resolve_uid(given, key="campaign_uid", what="campaign", where={"plan_name": "campaign"})


def _read_campaign(catalog_args: dict, given: str, read):
    """``read(cat, uid)`` of the campaign ``given`` names, in the command's catalog (closed after it)."""
    with opened_catalog(**catalog_args) as cat:
        return read(cat, _campaign_uid(cat, given))


def _prior_choice(prior: str | None) -> str | None:
    """``--prior``: ``"twin"`` (the shipped presets) or a presets file, stored as an absolute path so a resume
    finds it; a file that is not there is refused."""
    from gainloop.campaign import SHIPPED_PRIOR

    if prior is None or prior == SHIPPED_PRIOR:
        return prior
    path = Path(prior).expanduser()
    if not path.is_file():
        with command_errors():
            raise GainloopError(f"--prior {prior!r}: no such presets file (or 'twin' for the shipped presets)")
    return str(path.resolve())


CampaignUidArgument = Annotated[str, typer.Argument(help="uid of the campaign (or an unambiguous start of it).")]
NewBudgetHoursOption = with_help(BudgetHoursOption, "New total lab-time budget, hours (default: as stored).")
NewMaxTrialsOption = with_help(MaxTrialsOption, "New total trial budget (default: as stored).")
DemoMaxTrialsOption = with_help(MaxTrialsOption, "Most trials the demo campaign may take to reach its goal.")


@campaign_app.command("run")
@bench_command
@reads_catalog
def campaign_run(
    twin: TwinOption = False,
    bench: BenchFileOption = None,
    strategy: Annotated[
        str | None, typer.Option("--strategy", help="nested, random or grid (default: nested).")
    ] = None,
    budget_hours: BudgetHoursOption = None,
    max_trials: MaxTrialsOption = None,
    target: TargetOption = None,
    seed: OptimiserSeedOption = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Proposals per round (q).")] = None,
    material: Annotated[
        str | None,
        typer.Option(
            "--material",
            help="The material to optimise: only films of it are measured (default: the bench file's "
            "[stage] new_film_material, the material new films are made of).",
        ),
    ] = None,
    prior: Annotated[
        str | None,
        typer.Option(
            "--prior",
            help="Twin-guided (nested strategy): the GP's prior mean is the twin's threshold map from this "
            "presets file (e.g. a calibrated one), or 'twin' for the shipped presets; its level, depth and "
            "1P intraband absorption are refitted to the campaign's scans.",
        ),
    ] = None,
    warm_start: Annotated[
        list[str] | None,
        typer.Option(
            "--warm-start",
            help="An earlier campaign (uid or an unambiguous start of it; repeatable) of the same material: its "
            "completed trials are the model's data from the start (recorded in this campaign's config, never "
            "measured again); or a QUERY of stored ase_fluence_scan runs, key=value pairs of their start "
            "documents (e.g. sample_id=cas_doped-film,since=2026-11-01): each accepted threshold fit on a film of "
            "the campaign's material is one trial. Nested strategy.",
        ),
    ] = None,
    json_out: JsonOption = False,
    **catalog_args,
) -> None:
    """Run a closed-loop campaign: suggest, measure, analyse, ingest, until a budget or the target.

    Ctrl+C or SIGTERM end it cleanly (its runs closed, the shutter closed); it prints the
    `gainloop campaign resume` command that continues it.
    """
    overrides = {
        "strategy": strategy,
        "budget_lab_h": budget_hours,
        "max_trials": max_trials,
        "target_threshold_uJ_cm2": target,
        "seed": seed,
        "batch_size": batch_size,
        "material": material,
        "prior": _prior_choice(prior),
        "warm_start": tuple(warm_start) if warm_start else None,
    }
    summary = _run_campaign_cli(overrides, twin, bench, json_out, catalog_args)
    _print_campaign(summary, json_out)


@bench_command
def demo(
    config: ConfigOption = None,
    max_trials: DemoMaxTrialsOption = 40,
    seed: OptimiserSeedOption = None,
    data_dir: DataDirOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for reports (default: reports/ in the data folder).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """The main job: a campaign on the twin, into the embedded catalog, until it has measured a threshold
    within 5 % of the twin's true optimum; its best conditions beside that optimum, and its report."""
    from gainloop.catalog import data_dir as resolve_data_dir
    from gainloop.demo import GOAL_FRACTION, judge, twin_goal

    with command_errors():
        folder = resolve_data_dir(data_dir)
        if load_config(config).bench.file is not None:
            raise GainloopError(
                "the demo runs on the twin (its optimum is the yardstick); the config names a bench file: "
                "run `gainloop campaign run --config FILE` on a bench"
            )
        goal = twin_goal()
    overrides = {
        "max_trials": max_trials,
        "seed": seed,
        "budget_lab_h": 48.0,
        "target_threshold_uJ_cm2": goal.target_uJ_cm2,
    }
    reports = out if out is not None else folder / "reports"
    on_twin = {"catalog": None, "api_key": None, "data_dir": folder, "config": config}  # the embedded catalog
    summary = _run_campaign_cli(overrides, True, None, json_out, on_twin, report_dir=reports)
    verdict = judge(summary.get("best"), goal)
    if json_out:
        keys = ("campaign_uid", "best", "lab_hours", "trials", "failures", "report")
        print_json({**{k: summary.get(k) for k in keys}, **verdict})
        return
    _print_campaign(summary, json_out)
    opt = verdict["optimum"]
    _console.print(
        f"the twin's true optimum: {opt['threshold_uJ_cm2']:.1f} uJ/cm^2 at stripe {opt['stripe_length_um']:.0f} um, "
        f"doping {opt['doping']:.2f} electrons/dot"
    )
    if verdict["within_fraction"] is None:
        _console.print("[bold red]no threshold was measured[/]: the goal was not reached")
    else:
        true = verdict["true_threshold_uJ_cm2"]
        where = f" (the twin's own threshold there: {true:.1f} uJ/cm^2)" if true is not None else ""
        how = "[bold green]goal reached[/]" if verdict["reached"] else "[bold red]goal not reached[/]"
        _console.print(
            f"{how}: the best measured threshold is {verdict['within_fraction']:+.1%} from the optimum{where}, "
            f"goal within {GOAL_FRACTION:.0%}; {summary['lab_hours']:.1f} lab hours, {summary['trials']} trials"
        )
    _console.print(f"report: {summary['report']}")


@campaign_app.command("resume")
@bench_command
@reads_catalog
def campaign_resume(
    campaign_uid: Annotated[
        str, typer.Argument(help="uid of the campaign to continue (or an unambiguous start of it).")
    ],
    budget_hours: NewBudgetHoursOption = None,
    max_trials: NewMaxTrialsOption = None,
    json_out: JsonOption = False,
    **catalog_args,
) -> None:
    """Rebuild a campaign's state from the catalog alone and continue it."""
    from gainloop.campaign import run_campaign

    with (
        opened_catalog(**catalog_args, also=(ValueError,)) as cat,
        bluesky_prints_to_stderr(json_out),
    ):
        summary = run_campaign(
            cat,
            resume_uid=_campaign_uid(cat, campaign_uid),
            budgets={"budget_lab_h": budget_hours, "max_trials": max_trials},
            exit_on_interrupt=True,
        )
    _print_campaign(summary, json_out)


@campaign_app.command("status")
@reads_catalog
def campaign_status_cmd(campaign_uid: CampaignUidArgument, json_out: JsonOption = False, **catalog_args) -> None:
    """Best conditions so far, lab time used, trials, failures."""
    from gainloop.campaign import campaign_status

    _print_campaign(_read_campaign(catalog_args, campaign_uid, campaign_status), json_out)


@reads_catalog
def report_cmd(
    campaign_uid: CampaignUidArgument,
    out: Annotated[Path, typer.Option("--out", help="Folder to write index.html and its PNG figures into.")],
    json_out: JsonOption = False,
    **catalog_args,
) -> None:
    """Write a campaign's report: an HTML page with PNG figures; print the path of its index.html."""
    from gainloop.report import build_report

    report = _read_campaign(catalog_args, campaign_uid, lambda cat, uid: build_report(cat, uid, out))
    if json_out:
        print_json({"report": str(report.index), "figures": [str(p) for p in report.figures]})
    else:
        sys.stdout.write(f"{report.index}\n")
