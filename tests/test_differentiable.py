"""The differentiable twin: the numpy equations run in torch give the same numbers, and autograd's
derivatives with respect to the preset parameters equal finite differences of the numpy twin."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from twin.ase import ase_output, stripe_gain, vsl_output
from twin.differentiable import DIFFERENTIABLE_PARAMETERS, differentiable_key, tensor_presets
from twin.instrument import expected_stripe_counts
from twin.occupancy import doping_range
from twin.presets import get_parameter, with_parameters

FLUENCES = np.geomspace(5.0, 3000.0, 9)
LENGTHS = np.array([10.0, 120.0, 800.0, 4000.0])


def _t(x):
    return torch.as_tensor(np.asarray(x, dtype=float), dtype=torch.float64)


def _dopings(sample):
    lo, hi = doping_range(sample.degeneracy, sample.doping_distribution)
    return np.unique(np.array([lo, sample.doping_ne, 3.0, 7.4, hi]).clip(lo, hi))


@pytest.mark.parametrize("sid", ["core", "cas", "cas_doped"])
def test_torch_equals_numpy_over_a_grid_for_every_preset(presets, sid):
    sample, setup = presets.get(sid), presets.setup
    f, length, d = np.meshgrid(FLUENCES, LENGTHS, _dopings(sample), indexing="ij")
    for at_peak in (False, True):
        a = ase_output(f, length, d, sample, setup, at_peak=at_peak)
        b = ase_output(_t(f), _t(length), _t(d), sample, setup, at_peak=at_peak)
        assert isinstance(b, torch.Tensor)
        np.testing.assert_allclose(b.numpy(), a, rtol=1e-9, atol=0)
    st_np = stripe_gain(f, length, d, sample, setup)
    st_t = stripe_gain(_t(f), _t(length), _t(d), sample, setup)
    for name in ("absorbing", "emitting", "spontaneous", "auger_factor", "loss_per_cm"):
        np.testing.assert_allclose(getattr(st_t, name).numpy(), getattr(st_np, name), rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(
        vsl_output(_t(LENGTHS), _t(300.0), _t(sample.doping_ne), sample, setup).numpy(),
        vsl_output(LENGTHS, 300.0, sample.doping_ne, sample, setup),
        rtol=1e-9,
    )
    # the spectrometer's integrated counts (pixel by pixel, pulse-jitter average) and their variance
    ff, ll = np.meshgrid(FLUENCES, LENGTHS[1:3], indexing="ij")
    m_np, v_np = expected_stripe_counts(ff, ll, sample.doping_ne, 3.0, sample, setup, presets.noise)
    m_t, v_t = expected_stripe_counts(_t(ff), _t(ll), _t(sample.doping_ne), _t(3.0), sample, setup, presets.noise)
    np.testing.assert_allclose(m_t.numpy(), m_np, rtol=1e-9)
    np.testing.assert_allclose(v_t.numpy(), v_np, rtol=1e-9)


def test_a_tensor_input_is_checked_like_an_array(presets):
    sample, setup = presets.get("cas_doped"), presets.setup
    with pytest.raises(ValueError, match="negative"):
        ase_output(_t([-1.0]), _t(800.0), _t(7.4), sample, setup)
    with pytest.raises(ValueError, match="stripe length"):
        ase_output(_t([100.0]), _t(5.0), _t(7.4), sample, setup)


NAMES = [
    "cas_doped.film.absorbed_fraction_1030",
    "cas_doped.film.alpha0_per_cm",
    "cas_doped.film.confinement",
    "cas_doped.film.waveguide_loss_per_cm",
    "cas_doped.film.intraband_loss_1p_per_cm",
    "cas_doped.film.saturation_intensity",
    "cas_doped.auger.tau_xx_ps",
    "cas_doped.exciton_yield",
]


def _log_counts_numpy(presets, values: dict, f, length):
    p = with_parameters(presets, values)
    s = p.get("cas_doped")
    m, _ = expected_stripe_counts(f, length, s.doping_ne, 3.0, s, p.setup, p.noise)
    return np.log(m)


def test_autograd_gradients_equal_finite_differences(presets):
    """d ln(counts)/d ln(parameter) by autograd through the torch twin vs central differences of the numpy twin."""
    f = np.array([40.0, 95.0, 130.0, 400.0, 2000.0])
    length = np.array([800.0, 800.0, 300.0, 2000.0, 200.0])
    base = {n: get_parameter(presets, n) for n in NAMES}
    base["cas_doped.exciton_yield"] = 0.9  # inside (0.8, 1]: both sides of the difference stay valid
    u = torch.tensor([math.log(v) for v in base.values()], dtype=torch.float64, requires_grad=True)
    sample = tensor_presets(presets, dict(zip(NAMES, torch.exp(u), strict=True)))["cas_doped"]
    m, _ = expected_stripe_counts(_t(f), _t(length), _t(7.4), _t(3.0), sample, presets.setup, presets.noise)
    # the value itself equals the numpy twin's at the same parameters
    np.testing.assert_allclose(m.detach().numpy(), np.exp(_log_counts_numpy(presets, base, f, length)), rtol=1e-9)
    log_m = torch.log(m)
    for i, name in enumerate(NAMES):
        (grad,) = torch.autograd.grad(log_m, u, grad_outputs=torch.ones_like(log_m), retain_graph=True)
        # per point: one backward per output keeps it simple
        auto = np.array([torch.autograd.grad(log_m[k], u, retain_graph=True)[0][i].item() for k in range(len(f))])
        assert grad[i].item() == pytest.approx(auto.sum(), rel=1e-9, abs=1e-12)
        h = 1e-7  # small: the gain table is bilinear, a larger step can straddle a node of it
        up = {**base, name: base[name] * math.exp(h)}
        down = {**base, name: base[name] * math.exp(-h)}
        fd = (_log_counts_numpy(presets, up, f, length) - _log_counts_numpy(presets, down, f, length)) / (2 * h)
        np.testing.assert_allclose(auto, fd, rtol=2e-4, atol=2e-6, err_msg=name)
    # the derivatives are not trivially zero: the kappa and the gain parameters move the output
    assert abs(fd).max() > 0.1


DELAYS_PS = np.r_[0.0, np.geomspace(0.2, 5000.0, 25)]
TA_NAMES = ("auger.tau_xx_ps", "auger.scaling_exponent", "auger.electron_fraction", "auger.tau_x_radiative_ns")


@pytest.mark.parametrize("sid", ["core", "cas", "cas_doped"])
def test_the_ta_trace_in_torch_equals_numpys_for_every_preset(presets, sid):
    """The TA bleach trace: the torch path (matrix exponential of the cascade) equals the numpy path (the
    uniformized series) to rtol 1e-9 over delays, pump levels and dopings, plain and differential."""
    from twin.differentiable import tensor_sample
    from twin.dynamics import ta_trace

    sample = presets.get(sid)
    values = {k: torch.tensor(float(get_parameter(presets, f"{sid}.{k}")), dtype=torch.float64) for k in TA_NAMES}
    ts = tensor_sample(sample, values)
    lo, hi = doping_range(sample.degeneracy, sample.doping_distribution)
    dopings = sorted({float(np.clip(v, lo, hi)) for v in (lo, sample.doping_ne, 2.0, hi - 0.05)})
    for mean in (0.0, 0.2, 1.0, 3.0, 8.0):
        for doping in dopings:
            for differential in (False, True) if mean == 1.0 else (False,):
                a = ta_trace(DELAYS_PS, mean, sample, doping, differential=differential)
                b = ta_trace(DELAYS_PS, _t(mean), ts, doping, differential=differential)
                assert isinstance(b, torch.Tensor)
                np.testing.assert_allclose(b.numpy(), a, rtol=1e-9, atol=1e-12, err_msg=f"<N> {mean}, doping {doping}")


def test_the_ta_traces_gradients_equal_finite_differences(presets):
    """d(alpha/alpha0)(t)/d ln(parameter) by autograd vs central differences of the numpy twin, for the Auger
    and radiative parameters, the exciton yield and the pump's <N>."""
    from twin.differentiable import tensor_sample
    from twin.dynamics import ta_trace

    sid, mean, doping = "cas_doped", 1.2, 7.0
    names = (*TA_NAMES, "exciton_yield")
    base = {k: float(get_parameter(presets, f"{sid}.{k}")) for k in names}
    base["exciton_yield"] = 0.9  # inside its range on both sides of the difference
    base["auger.electron_fraction"] = max(base["auger.electron_fraction"], 0.05)
    delays = np.array([0.0, 3.0, 30.0, 150.0, 1000.0])
    u = torch.tensor([math.log(v) for v in (*base.values(), mean)], dtype=torch.float64, requires_grad=True)
    sample = presets.get(sid)
    ts = tensor_sample(sample, dict(zip(names, torch.exp(u[:-1]), strict=True)))
    alpha = ta_trace(delays, torch.exp(u[-1]), ts, doping)

    def numpy_alpha(vals: dict, n: float) -> np.ndarray:
        p = with_parameters(presets, {f"{sid}.{k}": v for k, v in vals.items()})
        return ta_trace(delays, n, p.get(sid), doping)

    np.testing.assert_allclose(alpha.detach().numpy(), numpy_alpha(base, mean), rtol=1e-9, atol=1e-12)
    jac = np.stack([torch.autograd.grad(alpha[k], u, retain_graph=True)[0].numpy() for k in range(delays.size)])
    h = 1e-6
    for i, name in enumerate((*names, "<N>")):
        if name == "<N>":
            fd = (numpy_alpha(base, mean * math.exp(h)) - numpy_alpha(base, mean * math.exp(-h))) / (2 * h)
        else:
            up = {**base, name: base[name] * math.exp(h)}
            down = {**base, name: base[name] * math.exp(-h)}
            fd = (numpy_alpha(up, mean) - numpy_alpha(down, mean)) / (2 * h)
        np.testing.assert_allclose(jac[:, i], fd, rtol=1e-5, atol=1e-8, err_msg=name)
    # the trace depends on tau_XX and <N> where the multiexcitons decay (not trivially zero)
    assert abs(jac[2, 0]) > 1e-3 and abs(jac[1, -1]) > 1e-3


def test_a_ta_runs_readings_in_torch_equal_the_numpy_traces_and_their_gradients(presets):
    """``ta_readings`` (a TA run as stored: a threshold series at one delay and many pumps, delay scans at a few
    pumps, a pump of 0) in torch, pump levels batched, equals ``ta_trace`` per reading in numpy; its forward-mode
    derivatives (the calibration's Jacobian) equal central differences of the numpy twin, and reverse mode
    agrees with them along a random direction."""
    import torch.autograd.forward_ad as fwd

    from twin.differentiable import make_dual, tensor_sample
    from twin.dynamics import ta_readings, ta_trace

    sid, doping = "cas_doped", 7.0
    sample = presets.get(sid)
    levels = np.r_[np.geomspace(0.05, 6.0, 12), np.full(20, 0.3), np.full(12, 3.0), [0.0, 0.0]]
    delays = np.r_[np.full(12, 2.0), np.linspace(0.0, 3000.0, 20), np.geomspace(1.0, 4000.0, 12), [0.0, 50.0]]
    expected = np.array(
        [ta_trace(np.array([t]), n, sample, doping, differential=True)[0] for t, n in zip(delays, levels, strict=True)]
    )
    np.testing.assert_allclose(ta_readings(delays, levels, sample, doping, differential=True), expected, rtol=1e-12)
    names = ("auger.tau_xx_ps", "auger.electron_fraction", "exciton_yield")
    values = {k: float(get_parameter(presets, f"{sid}.{k}")) for k in names}
    values["exciton_yield"] = 0.9  # inside its range on both sides of the difference
    values["auger.electron_fraction"] = max(values["auger.electron_fraction"], 0.05)
    base = torch.tensor(list(values.values()), dtype=torch.float64)
    got = ta_readings(
        delays, _t(levels), tensor_sample(sample, dict(zip(names, base, strict=True))), doping, differential=True
    )
    numpy_at = with_parameters(presets, {f"{sid}.{k}": v for k, v in values.items()}).get(sid)
    np.testing.assert_allclose(
        got.numpy(), ta_readings(delays, levels, numpy_at, doping, differential=True), rtol=1e-9, atol=1e-12
    )
    jac = np.zeros((delays.size, len(names)))
    for i, name in enumerate(names):
        tangent = torch.zeros(len(names), dtype=torch.float64)
        tangent[i] = 1.0
        with fwd.dual_level():
            dual = make_dual(base, tangent)
            out = ta_readings(
                delays,
                _t(levels),
                tensor_sample(sample, dict(zip(names, dual, strict=True))),
                doping,
                differential=True,
            )
            jac[:, i] = fwd.unpack_dual(out).tangent.numpy()
        h = 1e-6 * values[name]
        up = with_parameters(presets, {f"{sid}.{k}": v + (h if k == name else 0.0) for k, v in values.items()}).get(sid)
        down = with_parameters(presets, {f"{sid}.{k}": v - (h if k == name else 0.0) for k, v in values.items()}).get(
            sid
        )
        fd = (
            ta_readings(delays, levels, up, doping, differential=True)
            - ta_readings(delays, levels, down, doping, differential=True)
        ) / (2 * h)
        np.testing.assert_allclose(jac[:, i], fd, rtol=1e-5, atol=1e-9, err_msg=name)
    u = base.clone().requires_grad_(True)
    out = ta_readings(
        delays, _t(levels), tensor_sample(sample, dict(zip(names, u, strict=True))), doping, differential=True
    )
    w = np.random.default_rng(0).normal(size=delays.size)
    (grad,) = torch.autograd.grad(out @ torch.as_tensor(w), u)
    np.testing.assert_allclose(grad.numpy(), w @ jac, rtol=1e-8)
    assert np.abs(jac[:, 0]).max() > 1e-5  # tau_XX moves the multiexciton decay
    with pytest.raises(ValueError, match="one length"):
        ta_readings(delays[:3], levels[:2], sample)


DFB_NAMES = ("film.alpha0_per_cm", "film.waveguide_loss_per_cm", "exciton_yield")


@pytest.mark.parametrize("sid", ["cas", "cas_doped"])
def test_the_dfb_output_curve_in_torch_equals_numpys_for_every_device(presets, sid):
    """The DFB output (lasing line + TM + PL) versus fluence, at several dopings: torch equals numpy to rtol 1e-9,
    below, at and above threshold (the threshold itself from root finding plus one torch Newton step)."""
    from twin.dfb import dfb_output, dfb_threshold_uJ_cm2
    from twin.differentiable import tensor_sample

    sample = presets.get(sid)
    ts = tensor_sample(
        sample, {k: torch.tensor(float(get_parameter(presets, f"{sid}.{k}")), dtype=torch.float64) for k in DFB_NAMES}
    )
    lo, hi = doping_range(sample.degeneracy, sample.doping_distribution)
    for doping in sorted({float(np.clip(v, lo, hi)) for v in (lo, sample.doping_ne, 2.0)}):
        f_th = dfb_threshold_uJ_cm2(sample, doping)
        fluences = (
            np.r_[np.geomspace(5.0, 1500.0, 12), [f_th * 0.99, f_th, f_th * 1.01]]
            if np.isfinite(f_th)
            else (np.geomspace(5.0, 1500.0, 12))
        )
        a = dfb_output(fluences, sample, doping)
        b = dfb_output(_t(fluences), ts, doping)
        assert isinstance(b, torch.Tensor)
        np.testing.assert_allclose(b.numpy(), a, rtol=1e-9, atol=0, err_msg=f"{sid} at doping {doping}")
    # a numpy sample with a tensor fluence runs in torch too
    np.testing.assert_allclose(dfb_output(_t([300.0]), sample).numpy(), [dfb_output(300.0, sample)], rtol=1e-12)


def test_the_dfb_output_curves_gradients_equal_finite_differences(presets):
    """d ln(output)/d ln(parameter) of the doped DFB by autograd vs central differences of the numpy twin, below
    and above threshold: the threshold's own dependence on the parameters (implicit, through the Newton step)
    is in the derivative above threshold."""
    from twin.dfb import dfb_output, dfb_threshold_uJ_cm2
    from twin.differentiable import tensor_sample

    sid = "cas_doped"
    sample = presets.get(sid)
    base = {k: float(get_parameter(presets, f"{sid}.{k}")) for k in DFB_NAMES}
    base["exciton_yield"] = 0.9  # inside its range on both sides of the difference
    f_th = dfb_threshold_uJ_cm2(with_parameters(presets, {f"{sid}.{k}": v for k, v in base.items()}).get(sid))
    fluences = np.array([0.5, 0.9, 1.2, 2.0, 4.0]) * f_th
    u = torch.tensor([math.log(v) for v in base.values()], dtype=torch.float64, requires_grad=True)
    ts = tensor_sample(sample, dict(zip(DFB_NAMES, torch.exp(u), strict=True)))
    log_out = torch.log(dfb_output(_t(fluences), ts))

    def numpy_log_out(vals: dict) -> np.ndarray:
        p = with_parameters(presets, {f"{sid}.{k}": v for k, v in vals.items()})
        return np.log(dfb_output(fluences, p.get(sid)))

    np.testing.assert_allclose(log_out.detach().numpy(), numpy_log_out(base), rtol=1e-9)
    jac = np.stack([torch.autograd.grad(log_out[k], u, retain_graph=True)[0].numpy() for k in range(fluences.size)])
    h = 1e-6
    for i, name in enumerate(DFB_NAMES):
        up = {**base, name: base[name] * math.exp(h)}
        down = {**base, name: base[name] * math.exp(-h)}
        fd = (numpy_log_out(up) - numpy_log_out(down)) / (2 * h)
        np.testing.assert_allclose(jac[:, i], fd, rtol=1e-4, atol=1e-7, err_msg=name)
    # above threshold the output depends on the gain and on the (small, next to the grating's) waveguide loss
    assert abs(jac[3, 0]) > 1.0 and abs(jac[3, 1]) > 0.01


def test_only_the_differentiable_parameters_can_be_varied(presets):
    assert "film.alpha0_per_cm" in DIFFERENTIABLE_PARAMETERS
    assert differentiable_key(presets, "cas_doped.auger.tau_xx_ps") == ("cas_doped", "auger.tau_xx_ps")
    with pytest.raises(KeyError, match="not a parameter the differentiable twin varies"):
        differentiable_key(presets, "cas_doped.spectra.abs_peak_nm")
    with pytest.raises(KeyError, match="not a parameter of a sample"):
        differentiable_key(presets, "nosuch.film.alpha0_per_cm")


def test_the_dfb_counts_model_in_torch_equals_numpys_with_damage_and_its_gradient_finite_differences(presets):
    """The spectrometer's integrated counts of DFB reads (``expected_dfb_counts``: the analysed spectrum summed over
    the pixels), in torch with alpha0 scaled per read by its photo-damage, equal the numpy twin's read by read
    (``damaged_sample``) to rtol 1e-9, below, at and above threshold and through a turned analyser; the gradient in
    ln(parameter) equals central differences of the numpy counts."""
    from twin.damage import damaged_sample
    from twin.dfb import dfb_threshold_uJ_cm2
    from twin.differentiable import tensor_sample
    from twin.instrument import expected_dfb_counts

    sid = "cas_doped"
    sample = presets.get(sid)
    noise = presets.noise
    f_th = dfb_threshold_uJ_cm2(sample)
    fluences = np.array([0.3, 0.9, 0.99, 1.0, 1.01, 1.3, 3.0, 10.0]) * f_th
    doses = np.linspace(0.0, 2e-3, fluences.size)
    angle = 40.0
    numpy_counts = np.array(
        [
            float(expected_dfb_counts(f, angle, 7.4, 3.0, damaged_sample(sample, d), noise)[0])
            for f, d in zip(fluences, doses, strict=True)
        ]
    )
    base = {k: float(get_parameter(presets, f"{sid}.{k}")) for k in DFB_NAMES}
    base["exciton_yield"] = 0.9
    u = torch.tensor([math.log(v) for v in base.values()], dtype=torch.float64, requires_grad=True)
    values = dict(zip(DFB_NAMES, torch.exp(u), strict=True))

    def torch_counts(vals):
        vals = dict(vals)
        vals["film.alpha0_per_cm"] = vals["film.alpha0_per_cm"] * torch.exp(-_t(doses))
        return expected_dfb_counts(_t(fluences), angle, 7.4, 3.0, tensor_sample(sample, vals), noise)[0]

    at_preset = torch_counts(
        {k: torch.tensor(float(get_parameter(presets, f"{sid}.{k}")), dtype=torch.float64) for k in DFB_NAMES}
    )
    np.testing.assert_allclose(at_preset.numpy(), numpy_counts, rtol=1e-9)
    log_counts = torch.log(torch_counts(values))
    jac = np.stack([torch.autograd.grad(log_counts[k], u, retain_graph=True)[0].numpy() for k in range(fluences.size)])

    def numpy_log_counts(vals: dict) -> np.ndarray:
        s = with_parameters(presets, {f"{sid}.{k}": v for k, v in vals.items()}).get(sid)
        return np.log(
            [
                float(expected_dfb_counts(f, angle, 7.4, 3.0, damaged_sample(s, d), noise)[0])
                for f, d in zip(fluences, doses, strict=True)
            ]
        )

    h = 1e-6
    for i, name in enumerate(DFB_NAMES):
        fd = (
            numpy_log_counts({**base, name: base[name] * math.exp(h)})
            - numpy_log_counts({**base, name: base[name] * math.exp(-h)})
        ) / (2 * h)
        np.testing.assert_allclose(jac[:, i], fd, rtol=1e-4, atol=1e-6, err_msg=name)
    assert abs(jac[5, 0]) > 1.0  # above threshold the counts follow the gain steeply
