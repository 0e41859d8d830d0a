"""Joint formulation: a trial is one acquisition at (fluence, stripe length, doping).

Model (physics-aware). Inputs ``x = (u_F, u_L, u_n)`` in the unit cube (log fluence, log
stripe length, doping), float64. Output: the output per unit pumped fluence and length,

    y = ln(counts_per_s / (fluence_uJ_cm2 * stripe_length_um)),

(the fluence the power meter read, ``measured_fluence_uJ_cm2``, when the outcome has it),

which is flat in fluence below the ASE threshold (spontaneous emission grows linearly
with both) and rises steeply above it (amplification). A ``SingleTaskGP`` with learned
homoscedastic noise and a standardised outcome models ``y``.

Lasing. Point ``x = (F, L, n)`` lases when ``h(x) = y(F, L, n) - y(F_lo, L, n) - ln 2 > 0``:
the output per unit fluence is at least twice its value at the lowest fluence of the
space (the spontaneous floor) at the same stripe and doping. ``h`` is Gaussian under the
posterior (a difference of two jointly Gaussian values), so ``P(lasing at x) =
Phi(mean_h / sd_h)``. The threshold at (L, n) is the lowest fluence where ``h`` crosses 0;
its distribution comes from joint posterior samples of ``h`` on a log-fluence grid.

Acquisition: expected improvement of the lowest lasing fluence, in log units,

    a(x) = P(lasing at x) * max(ln F_best - ln F, 0),

with ``F_best`` the current best boundary estimate (the safe-set cap before any lasing
is seen), minus ``ln(cost / acquisition cost)`` (value per unit lab time, as in the
nested formulation). It is largest just below the current best boundary where lasing is
uncertain -- proposals pin down the lowest-fluence boundary -- and at lower fluences
elsewhere only when the model gives them a real chance of lasing. It is maximised over a
seeded candidate set: scrambled Sobol (F, L) points on every existing film (library
level), plus (continuous doping) Sobol (F, L, n) points priced as a new film. Fluences
are drawn up to the safe-set cap only; an ``infeasible`` trial (the bench could not
deliver the fluence) removes every candidate at that or a higher fluence with that or
a longer stripe (the pulse-energy cap falls with stripe length). Batches are greedy with
the kriging believer (each pick is added to the model at its predicted mean).

``best()`` reports the boundary estimate at the best measured (L, n): the median of the
sampled thresholds and half their 16-84 % range as ``threshold_err_uJ_cm2``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import torch
from botorch.utils.sampling import manual_seed
from torch.quasirandom import SobolEngine

from core.errors import ParameterError
from core.trial import Proposal

from ._base import Optimizer, _finite, _positive_reason
from ._cost import LabState
from ._models import DTYPE, fit_gp_input_noise, gp_hyperparameters, numerics
from ._space import DOPING, FLUENCE, JOINT_DIMS, LENGTH, SearchSpace

__all__ = ["JointOptimizer"]

_DESIGN_TAG = 0x7FFFFFFE
_SQRT2 = math.sqrt(2.0)


def _log_ndtr(z: torch.Tensor) -> torch.Tensor:
    return torch.special.log_ndtr(z)


class JointOptimizer(Optimizer):
    """GP on ln(counts / (F L)) over (log F, log L, doping); proposals pin the lasing boundary."""

    strategy = "joint"
    joint = True

    def __init__(
        self,
        space: SearchSpace,
        *,
        n_init: int = 8,
        n_candidates: int = 1024,
        fluence_grid: int = 48,
        boundary_samples: int = 128,
        lasing_margin: float = math.log(2.0),
        maxiter: int = 60,
        cost_aware: bool = True,
        torch_threads: int | None = 1,
        **common: Any,
    ) -> None:
        """``common``: every strategy's keywords (``Optimizer``): ``seed``, ``cost``, ``objectives``
        (the threshold only), ``batch_size``, ``lab_state``. The others tune the search (module docstring)."""
        super().__init__(space, **common)
        if self.objectives != ("threshold",):
            raise ParameterError("the joint formulation optimises the threshold only; objectives=('threshold',)")
        self.n_init = int(n_init)
        self.n_candidates = int(n_candidates)
        self.fluence_grid = int(fluence_grid)
        self.boundary_samples = int(boundary_samples)
        self.lasing_margin = float(lasing_margin)
        self.maxiter = int(maxiter)
        self.cost_aware = bool(cost_aware)
        self.torch_threads = torch_threads
        self._model_cache: tuple[int, Any] | None = None

    # ---- data -------------------------------------------------------------------------
    def _outcome_reason(self, outcome: Mapping[str, Any]) -> str | None:
        return _positive_reason(outcome, "counts_per_s")

    def _unit(self, params: Mapping[str, Any]) -> list[float]:
        return self.space.to_unit(params, JOINT_DIMS).tolist()

    def training_data(self) -> dict[str, torch.Tensor]:
        """``X`` (n x 3 unit cube), ``Y`` = ln(counts_per_s / (F L)) (n x 1), ``X_sd`` (n x 3: the inputs'
        standard uncertainties, unit cube), ``X_infeasible`` (m x 3). Inputs as measured
        (``Optimizer.model_inputs``: a film's measured doping, its error in ``X_sd``)."""
        X, Xsd, Y = [], [], []
        for r in self.history():
            if r.status != "completed" or (m := self.model_inputs(r)) is None:
                continue
            X.append(m[0])
            Xsd.append(m[1])
            # normalise by the fluence the power meter read when the plan reports it
            F = _finite(r.outcome.get("measured_fluence_uJ_cm2"))
            F = F if F is not None and F > 0 else float(r.params[FLUENCE])
            L = float(r.params[LENGTH])
            Y.append([math.log(float(r.outcome["counts_per_s"]) / (F * L))])
        inf = [m[0] for r in self.history() if r.status == "infeasible" and (m := self.model_inputs(r)) is not None]
        return {
            "X": torch.tensor(X, dtype=DTYPE) if X else torch.empty(0, 3, dtype=DTYPE),
            "X_sd": torch.tensor(Xsd, dtype=DTYPE) if Xsd else torch.empty(0, 3, dtype=DTYPE),
            "Y": torch.tensor(Y, dtype=DTYPE) if Y else torch.empty(0, 1, dtype=DTYPE),
            "X_infeasible": torch.tensor(inf, dtype=DTYPE) if inf else torch.empty(0, 3, dtype=DTYPE),
        }

    def _on_ingest(self) -> None:
        self._model_cache = None

    def model(self, messages: list[str] | None = None):
        """The fitted GP (cached until the next ingest); None with fewer than 3 completed trials."""
        data = self.training_data()
        n = int(data["X"].shape[0])
        if n < 3:
            return None
        if self._model_cache is not None and self._model_cache[0] == n:
            return self._model_cache[1]
        msgs = messages if messages is not None else []
        with manual_seed(self.trial_seed(_DESIGN_TAG)), numerics(self.torch_threads, msgs):
            model, info, _ = fit_gp_input_noise(data["X"], data["Y"], None, data["X_sd"], maxiter=self.maxiter)
        msgs += info.messages
        self._model_cache = (n, model)
        self._last["model"] = {"y": gp_hyperparameters(model, JOINT_DIMS)}
        return model

    # ---- lasing and the boundary ------------------------------------------------------
    def _h_stats(self, model, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and sd of h at unit-cube points ``X`` (N x 3)."""
        X_lo = X.clone()
        X_lo[:, 0] = 0.0
        pair = torch.stack([X, X_lo], dim=-2)  # N x 2 x 3
        with torch.no_grad():
            post = model.posterior(pair)
            mean = post.mean[..., 0]  # N x 2
            cov = post.distribution.covariance_matrix  # N x 2 x 2
        m = mean[:, 0] - mean[:, 1] - self.lasing_margin
        var = cov[:, 0, 0] + cov[:, 1, 1] - 2.0 * cov[:, 0, 1]
        return m, var.clamp_min(1e-12).sqrt()

    def boundary(self, model, ln: torch.Tensor, n_samples: int | None = None) -> dict[str, torch.Tensor]:
        """Threshold at (u_L, u_n) pairs ``ln`` (P x 2): posterior samples of the lowest lasing fluence.

        Returns ``median``, ``lo`` (16 %), ``hi`` (84 %) and ``mean_based`` (from the posterior
        mean of h), each P, in uJ/cm^2 (inf where no lasing up to the cap).
        """
        sp = self.space
        G = self.fluence_grid
        uF = torch.linspace(0.0, 1.0, G, dtype=DTYPE)
        P = ln.shape[0]
        X = torch.cat([uF.view(1, G, 1).expand(P, G, 1), ln.view(P, 1, 2).expand(P, G, 2)], dim=-1)  # P x G x 3
        with torch.no_grad():
            post = model.posterior(X)
            S = n_samples or self.boundary_samples
            samples = post.rsample(torch.Size([S]))[..., 0]  # S x P x G
            mean = post.mean[..., 0]  # P x G
        f_lo, f_hi = sp.bounds(FLUENCE)
        F = torch.exp(math.log(f_lo) + uF * (math.log(f_hi) - math.log(f_lo)))

        def first_crossing(y: torch.Tensor) -> torch.Tensor:
            h = y - y[..., :1] - self.lasing_margin
            up = h > 0
            has = up.any(-1)
            k = torch.where(has, up.to(torch.int64).argmax(-1), torch.zeros_like(has, dtype=torch.int64))
            # interpolate in log fluence between the last point below and the first above
            k0 = (k - 1).clamp_min(0)
            h0 = h.gather(-1, k0.unsqueeze(-1)).squeeze(-1)
            h1 = h.gather(-1, k.unsqueeze(-1)).squeeze(-1)
            frac = torch.where(k > 0, (-h0 / (h1 - h0).clamp_min(1e-12)).clamp(0.0, 1.0), torch.zeros_like(h0))
            lnF = torch.log(F)
            val = torch.exp(lnF[k0] + frac * (lnF[k] - lnF[k0]))
            return torch.where(has, val, torch.full_like(val, math.inf))

        thr_s = first_crossing(samples)  # S x P
        q = torch.quantile(thr_s, torch.tensor([0.16, 0.5, 0.84], dtype=DTYPE), dim=0)
        return {"lo": q[0], "median": q[1], "hi": q[2], "mean_based": first_crossing(mean)}

    def _measured_pairs(self) -> tuple[torch.Tensor, list[tuple[float, float, int]]]:
        """Distinct measured (L, n) pairs (unit cube) with the latest trial index at each."""
        seen: dict[tuple[float, float], int] = {}
        for r in self.history():
            if r.status == "completed" and self.model_inputs(r) is not None:  # where it was measured
                key = (round(float(r.observed[LENGTH]), 9), round(float(r.observed[DOPING]), 9))
                seen[key] = r.trial_index
        keys = list(seen)
        ln = [self.space.to_unit({LENGTH: k[0], DOPING: k[1]}, (LENGTH, DOPING)).tolist() for k in keys]
        return torch.tensor(ln, dtype=DTYPE).reshape(-1, 2), [(k[0], k[1], seen[k]) for k in keys]

    def best(self) -> dict | None:
        """Boundary estimate at the best measured (L, n): median threshold with half its 16-84 % range."""
        model = self.model()
        if model is None:
            return None
        ln, meta = self._measured_pairs()
        with manual_seed(self.trial_seed(_DESIGN_TAG)), numerics(self.torch_threads, []):
            b = self.boundary(model, ln)
        med = b["median"]
        if not bool(torch.isfinite(med).any()):
            return None
        j = int(torch.argmin(torch.where(torch.isfinite(med), med, torch.full_like(med, math.inf))))
        L, d, idx = meta[j]
        lo, hi = float(b["lo"][j]), float(b["hi"][j])
        err = 0.5 * (hi - lo) if math.isfinite(hi) else math.inf
        return {
            "threshold_uJ_cm2": float(med[j]),
            "threshold_err_uJ_cm2": err,
            "stripe_length_um": L,
            "doping": d,
            "trial_index": idx,
            "estimate": "lasing boundary (posterior median)",
        }

    # ---- proposing --------------------------------------------------------------------
    def _design(self) -> list[dict[str, float]]:
        sp = self.space
        sob = SobolEngine(3, scramble=True, seed=self.trial_seed(_DESIGN_TAG)).draw(self.n_init + 64, dtype=DTYPE)
        cur = self.initial_lab_state.current_doping
        if cur is not None:
            lo, hi = sp.doping_bounds
            d0u = sp.unit_doping(min(max(cur, lo), hi))
        else:
            d0u = float(sob[0, 2])
        d0 = sp.from_unit([0.0, 0.0, d0u], JOINT_DIMS)[DOPING]
        first = [sp.from_unit([float(r[0]), float(r[1]), 0.0], JOINT_DIMS) for r in sob[: self.n_init]]
        design = [{**p, DOPING: d0} for p in sorted(first, key=lambda p: p[LENGTH])]
        design += [sp.from_unit(r.tolist(), JOINT_DIMS) for r in sob[self.n_init :]]
        return design

    def _propose(self, indices: list[int], seed: int) -> list[Proposal]:
        t0 = time.perf_counter()
        state = self.lab_state()
        attempted = len(self._results) + len(self._pending)  # abandoned ones too: never proposed again
        n_completed = sum(1 for r in self._results.values() if r.status == "completed")
        design = self._design()
        out: list[Proposal] = []
        messages: list[str] = []
        model = None if (attempted < self.n_init or n_completed < 3) else self.model(messages)
        for idx in indices:
            if model is None:
                point = design[min(attempted, len(design) - 1)]
                out.append(self._proposal(idx, point, state, predicted={"design": True}))
                attempted += 1
                state = state.after(out[-1].params)
                continue
            break
        rest = indices[len(out) :]
        if rest:
            with manual_seed(seed), numerics(self.torch_threads, messages):
                out += self._bo(model, rest, seed, state, out)
        self._last["numerics"] = {"n_messages": len(messages), "last": messages[-5:]}
        self._last["suggest_s"] = time.perf_counter() - t0
        return out

    def _believe(self, model, units: list[list[float]]):
        """Kriging believer: the model conditioned on ``units`` (k x 3) at its posterior mean."""
        if not units:
            return model
        X = torch.tensor(units, dtype=DTYPE)
        with torch.no_grad():
            model.posterior(X[:1])  # fills the prediction caches condition_on_observations needs
            Y = model.posterior(X).mean
        return model.condition_on_observations(X=X, Y=Y)

    def _candidates(self, state: LabState, seed: int) -> torch.Tensor:
        sp = self.space
        parts = []
        fixed = (
            [sp.unit_doping(d) for d in sp.doping]
            if sp.discrete
            else [sp.unit_doping(d) for d in state.films if sp.doping_bounds[0] <= d <= sp.doping_bounds[1]]
        )
        n_per = max(self.n_candidates // 2, 64)
        for k, ud in enumerate(fixed):
            fl = SobolEngine(2, scramble=True, seed=seed + k + 1).draw(n_per, dtype=DTYPE)
            parts.append(torch.cat([fl, torch.full((n_per, 1), ud, dtype=DTYPE)], dim=-1))
        if not sp.discrete:
            parts.append(SobolEngine(3, scramble=True, seed=seed).draw(self.n_candidates, dtype=DTYPE))
        C = torch.cat(parts)
        # infeasible (F, L): the bench could not deliver F at L; drop F' >= F at L' >= L
        inf = self.training_data()["X_infeasible"]
        if inf.shape[0]:
            bad = ((C[:, None, 0] >= inf[None, :, 0] - 1e-12) & (C[:, None, 1] >= inf[None, :, 1] - 1e-12)).any(-1)
            C = C[~bad] if bool((~bad).any()) else C[:0]
        return C

    def _bo(self, model, indices: list[int], seed: int, state: LabState, design_out: list[Proposal]):
        sp = self.space
        ln_pairs, _ = self._measured_pairs()
        pend_units = [self._unit(p.params) for p in self.pending()] + [self._unit(p.params) for p in design_out]
        out: list[Proposal] = []
        last = []
        f_hi = sp.bounds(FLUENCE)[1]
        for k, idx in enumerate(indices):
            m = self._believe(model, pend_units)
            b = self.boundary(m, ln_pairs, n_samples=32) if ln_pairs.shape[0] else None
            finite = b["mean_based"][torch.isfinite(b["mean_based"])] if b is not None else torch.empty(0)
            f_best = float(finite.min()) if finite.numel() else f_hi
            C = self._candidates(state, seed + 104729 * k)
            if C.shape[0] == 0:  # everything ruled out: fall back to the safest design point
                C = torch.tensor([[0.0, 0.5, sp.unit_doping(state.current_doping or sp.doping_bounds[0])]], dtype=DTYPE)
            mh, sh = self._h_stats(m, C)
            F = sp.from_unit_tensor(C, JOINT_DIMS)[FLUENCE]
            gain = (math.log(f_best) - torch.log(F)).clamp_min(1e-9)
            log_a = _log_ndtr(mh / sh) + torch.log(gain)
            cost = self.expected_cost_s(C, state)  # the one cost model, as each proposal records it
            score = log_a - (torch.log(cost / self.cost.acquisition_s) if self.cost_aware else 0.0)
            j = int(torch.argmax(score))
            params = self._snap(sp.from_unit(C[j].tolist(), JOINT_DIMS), state)
            p_las = 0.5 * math.erfc(-float(mh[j] / sh[j]) / _SQRT2)
            predicted = {"p_lasing": p_las, "best_boundary_uJ_cm2": f_best}
            out.append(self._proposal(idx, params, state, predicted=predicted, acquisition_value=float(score[j])))
            full = out[-1].params
            last.append(
                {
                    "trial_index": idx,
                    "log_acquisition": float(log_a[j]),
                    "cost_s": float(cost[j]),
                    "value": float(score[j]),
                }
            )
            pend_units.append(self._unit(full))
            state = state.after(full)
        self._last["last_acquisition"] = last
        return out
