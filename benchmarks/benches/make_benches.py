"""Write the hidden-truth bench presets of ``campaign_lab_time.py --bench-presets`` (this folder's ``*.toml``).

Each bench is the shipped presets (``twin/data/presets.toml``) with several physical parameters of
the campaign's material (``cas_doped``; a dot parameter changes every sample of its dots, as
``twin.presets.with_parameters`` does) moved within ``twin.presets.PHYSICAL_RANGES``, so that its
optimum lies at a clearly different doping and threshold. The optimiser and its prior never see
these files: they are the truth of the twin's devices only.

Run ``python benchmarks/benches/make_benches.py`` to regenerate them (e.g. after the preset schema
changes); each file's header says what differs, the optimum and the width of its basin (the dopings
whose best threshold is within 5 % of the optimum), computed by ``twin.landscape``.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from twin.landscape import find_optimum, threshold_map  # noqa: E402
from twin.presets import PHYSICAL_RANGES, get_parameter, load_presets, with_parameters  # noqa: E402

SAMPLE = "cas_doped"
C = SAMPLE + "."

#: name -> (what it stands for, parameter changes). Dopings of the optima: low < 7.4 < mid < 7.8 < high.
BENCHES: dict[str, tuple[str, dict[str, float]]] = {
    "bench_low": (
        "lossier dots: strong 1P intraband absorption, faster trion Auger, a lossier and thicker film "
        "(optimum at low doping, broad basin below the library's 7.4 film)",
        {
            C + "film.intraband_loss_1p_per_cm": 150.0,
            C + "auger.electron_fraction": 0.12,
            C + "auger.tau_xx_ps": 450.0,
            C + "film.waveguide_loss_per_cm": 10.0,
            C + "film.thickness_nm": 180.0,
        },
    ),
    "bench_mid": (
        "moderate 1P intraband absorption, faster trion Auger, slower biexciton Auger, denser 1S "
        "absorption, a smoother film (optimum between 7.4 and 7.8, narrow basin)",
        {
            C + "film.intraband_loss_1p_per_cm": 45.0,
            C + "auger.electron_fraction": 0.12,
            C + "auger.tau_xx_ps": 700.0,
            C + "film.alpha0_per_cm": 5200.0,
            C + "film.waveguide_loss_per_cm": 1.5,
        },
    ),
    "bench_high": (
        "weak 1P intraband absorption, a thinner film with weaker 1S absorption and more waveguide loss "
        "(optimum above 7.8, narrow basin at the top of the range)",
        {
            C + "film.intraband_loss_1p_per_cm": 18.0,
            C + "auger.electron_fraction": 0.05,
            C + "film.waveguide_loss_per_cm": 6.0,
            C + "film.thickness_nm": 140.0,
            C + "film.alpha0_per_cm": 4000.0,
        },
    ),
}


def landscape_summary(presets) -> dict:
    """Optimum (threshold uJ/cm^2, stripe um, doping e/dot) and the basin: dopings within 5 % of it."""
    s = presets.get(SAMPLE)
    opt = find_optimum(s, presets.setup, SAMPLE)
    _, dopings, thr = threshold_map(s, presets.setup, 60, 200)
    ok = dopings[thr.min(axis=1) <= 1.05 * opt.threshold_uJ_cm2]
    return {**opt.as_dict(), "basin_lo": float(ok.min()), "basin_hi": float(ok.max())}


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")


def to_toml(data: dict, prefix: str = "") -> list[str]:
    """Lines of TOML for nested dicts of scalars and lists (None: key left out, the loader's default)."""
    lines = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict) and v is not None}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if prefix and scalars:
        lines.append(f"[{prefix}]")
    lines += [f"{k} = {_value(v)}" for k, v in scalars.items()]
    if scalars:
        lines.append("")
    for k, v in tables.items():
        lines += to_toml(v, f"{prefix}.{k}" if prefix else k)
    return lines


def main() -> None:
    shipped = load_presets()
    base = landscape_summary(shipped)
    for name, (what, changes) in BENCHES.items():
        for key in changes:  # inside the physical range (with_parameters checks again)
            rng = PHYSICAL_RANGES[key.split(".", 1)[1]]
            assert rng.lo <= changes[key] <= rng.hi, (key, changes[key])
        presets = with_parameters(shipped, changes)
        s = landscape_summary(presets)
        head = [
            f"# Bench presets {name!r}: the hidden truth of a twin bench for benchmarks/campaign_lab_time.py",
            "# (--bench-presets). Written by benchmarks/benches/make_benches.py: edit that, not this file.",
            f"# The shipped presets (twin/data/presets.toml) with {SAMPLE}'s material changed: {what}.",
            "# Changed (shipped -> here):",
            *(f"#   {k} = {get_parameter(shipped, k):g} -> {v:g}" for k, v in changes.items()),
            f"# Optimum: {s['threshold_uJ_cm2']:.1f} uJ/cm^2 at L = {s['stripe_length_um']:.0f} um, doping "
            f"{s['doping']:.2f} e/dot (shipped: {base['threshold_uJ_cm2']:.1f} at {base['stripe_length_um']:.0f} um, "
            f"{base['doping']:.2f});",
            f"# dopings within 5 % of it: {s['basin_lo']:.2f}-{s['basin_hi']:.2f} e/dot "
            f"(shipped {base['basin_lo']:.2f}-{base['basin_hi']:.2f}).",
            "",
        ]
        path = HERE / f"{name}.toml"
        path.write_text("\n".join(head + to_toml(presets.model_dump())).rstrip() + "\n")
        again = load_presets(path)  # the file loads and is these presets
        assert again == presets, name
        print(
            f"{path.name}: optimum {s['threshold_uJ_cm2']:.1f} uJ/cm^2, L {s['stripe_length_um']:.0f} um, "
            f"doping {s['doping']:.2f}, basin {s['basin_lo']:.2f}-{s['basin_hi']:.2f}"
        )


if __name__ == "__main__":
    main()
