"""Nested formulation: a trial is (stripe length, doping), measured by an adaptive fluence scan.

Model. Inputs: ``x = (u_L, u_n)`` in the unit cube (``u_L`` from log stripe length, ``u_n``
from doping; ``SearchSpace``), float64. Output: ``y = -ln(threshold_uJ_cm2)`` (maximised),
standardised, with fixed heteroscedastic noise from the scan's fit uncertainty:
``Var[y] = max(threshold_err / threshold, min_rel_err)^2`` (log-normal error
propagation; ``min_rel_err`` = 1 % floor for day-to-day repeatability; a missing error
counts as ``default_rel_err`` = 5 %). A ``SingleTaskGP`` refitted from scratch at every
suggestion. Kernel: BoTorch's default RBF (dimension-scaled log-normal length-scale prior)
plus a fixed *film-to-film* term (``_models.FilmKernel``): trials on one film share an
offset of ``film_rel_sd`` (3 %) that other films do not. Physically, two films of the same
nominal doping differ (thickness, ligand exchange); for the search it matters because a
smooth GP alone is confidently wrong about dopings between two films -- on the twin the
cas_doped optimum (doping 7.79) lies in a narrow dip below the edge of the doping range
that no smooth interpolation of films at 7.4 and 7.92 predicts; without the film term the
search settled ~9 % above it in most seeds tried (with it: within 5 % in 15-20 trials).
With it, a new film near the incumbent keeps a real chance of improvement, so exploration
in doping continues around the best film.

Constraints (outcome constraints of the acquisition, smoothed feasibility indicators):

* the safe set: the threshold must lie below ``fluence_limit_uJ_cm2``
  (``-y - ln(limit) <= 0``) -- a stripe whose threshold the interlock would not allow
  is worthless;
* "lasing observed": an ``infeasible`` trial (no ASE up to the fluence cap) carries no
  threshold value, only the fact that the threshold is above the cap there. Rather than
  imputing a made-up number at the cap, a second GP is regressed on the label +1
  (lasing observed) / -1 (not), over completed and infeasible trials, and the
  acquisition requires its latent value > 0. Label regression is a cheap, stable
  classifier that needs no approximate inference and is refitted in milliseconds; it is
  only built once an infeasible trial exists.

Acquisition. ``qLogNoisyExpectedImprovement`` (``qLogNoisyExpectedHypervolumeImprovement``
on ``(-ln threshold, gnet_per_cm)`` when ``objectives=("threshold", "gnet")``), with
pending proposals as ``X_pending``, minus ``ln(cost / measurement cost)``: log expected
improvement per unit lab time. The cost (``CostModel.cost_s``, the model each proposal's
``expected_cost_s`` records) is a step in doping -- nothing on the mounted film, a sample
change on another existing film, ``new_film_s`` (hours) for a doping with no film -- plus
the slit move. So a campaign uses a film until its expected
improvement has dropped by ~``ln(new_film_s / scan_s)`` (about 5 e-folds with the
defaults) before asking for a new one. Because a continuous optimiser never lands exactly
on an existing film's doping, the acquisition is maximised per *option*: each existing
film (discrete doping: each library level) as a 1-D problem in stripe length with the
doping fixed (a dense line of ``line_points``, the best refined on a finer local line),
plus (continuous doping) the free 2-D problem priced as a new film (a scrambled Sobol set
of ``raw_samples``, the best ``num_restarts`` polished with L-BFGS-B via
``gen_candidates_scipy`` when that option leads or comes within ``polish_margin``); the
best option wins. A batch (q > 1) is built greedily: each pick becomes pending for the next and updates the lab state.

Films as they come out. A new film's doping scatters around the request (on the twin
0.1 electrons/dot) and is measured from its absorption before its first trial. The model is
trained on the *measured* doping (``Optimizer.model_inputs``), its measurement error entering
as input noise (``_models.fit_gp_input_noise``: NIGP, ``(d mu / d doping)^2 sigma^2`` added to
each observation's noise where the fitted landscape is steep); each existing film is an option
at its measured doping. Requests are not biased: the acquisition asks for the doping it wants
and an unbiased film factory lands there in expectation.

*Edge decision: no inward margin.* The acquisition does not pull new-film requests inside the
doping range to hedge the scatter. On the shipped twin (cas_doped at the optimal stripe, 1063
um) the threshold is 79.7 uJ/cm^2 at 7.78-7.80, 80.3 at 7.84, 82.3 at 7.88, 84.1 at the range
edge 7.90 and 86.8 at 7.92; averaged over a 0.1 e/dot scatter (true doping clipped at 7.92) a
request at 7.79 gives a mean threshold of 81.8 with P(within 5 %) = 0.83, at 7.75 81.8 / 0.81,
at 7.70 82.5 / 0.72, at 7.85 82.5 / 0.68 and at the edge 7.90 83.6 / 0.50 (P(film above the
range) = 0.47). The scatter-averaged best request is within 0.04 e/dot of the point optimum (less
than a 0.1 % change in expected threshold), so a fixed margin would only cost: one sd inside (7.69)
loses ~1 % in mean threshold and 0.11 in P(within 5 %). Requesting at the edge is expensive
(P = 0.50), but the model proposes the edge only when its own posterior puts the optimum there,
and a film that comes out beyond the range is measured and modelled where it landed (at most
``Optimizer.MODEL_CUBE_MARGIN`` outside the cube). At the edge itself requests are not unbiased:
the factory cannot exceed 0.99 x 8 = 7.92, so a request at 7.90 lands below it on average.

Twin-guided (``prior``, ``film_doping_sd``; ``campaign run --prior``). With a ``PriorMap`` the
threshold GP's mean is the twin's map of -ln threshold, its level, depth, stripe-length shift and
1P-intraband family member refitted at every suggestion (``_prior.TwinPriorMean``); with
``film_doping_sd`` > 0 a new film's acquisition is the expectation over where its doping comes out
(``_ScatterAveraged``, the sd estimated from the films made once two are measured). Warm-start data
(``Optimizer.warm_start``: completed trials of earlier campaigns) join the threshold GP's training
data but not the history, the lab state or the best.

Initial design (cost-aware): ``n_init`` stripe lengths (scrambled Sobol in log length,
played shortest first) on one film -- the mounted film when the lab state names one,
else the first Sobol doping. If fewer than two trials have completed after that (e.g.
the first film does not lase), the design continues with 2-D Sobol points, as it does
when the model cannot be built from degenerate data (recorded as ``fallback`` in ``state()``).
If no measured point is likely feasible, the acquisition is qLogProbabilityOfFeasibility
(BoTorch's advice) until one is.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from botorch.acquisition import AcquisitionFunction
from botorch.acquisition.logei import qLogNoisyExpectedImprovement, qLogProbabilityOfFeasibility
from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
from botorch.acquisition.multi_objective.objective import IdentityMCMultiOutputObjective
from botorch.acquisition.objective import GenericMCObjective
from botorch.exceptions.errors import ModelFittingError
from botorch.exceptions.warnings import BotorchWarning
from botorch.generation.gen import gen_candidates_scipy
from botorch.models import ModelListGP
from botorch.sampling import SobolQMCNormalSampler
from botorch.utils.multi_objective.hypervolume import infer_reference_point
from botorch.utils.multi_objective.pareto import is_non_dominated
from botorch.utils.sampling import manual_seed
from linear_operator.utils.errors import NanError, NotPSDError
from numpy.typing import ArrayLike
from torch.quasirandom import SobolEngine

from core.errors import ParameterError
from core.trial import Proposal

from ._base import NotEnoughDataError, Optimizer, _finite
from ._cost import LabState
from ._models import DTYPE, fit_gp, fit_gp_input_noise, gp_hyperparameters, numerics
from ._prior import PriorMap
from ._space import DOPING, LENGTH, NESTED_DIMS, SearchSpace

__all__ = ["NestedOptimizer"]

#: Seed tag of the initial design (a trial index no campaign reaches).
_DESIGN_TAG = 0x7FFFFFFF


class _PerCost(AcquisitionFunction):
    """Log acquisition per unit lab time: ``base(X) - ln(batch_cost_s(X) / reference_s)``.

    Args:
        base: a log acquisition function of ``b x q x d`` unit-cube points.
        cost_s: seconds of a trial at each point, ``b x q x d -> b x q``
            (``Optimizer.expected_cost_s`` bound to a lab state).
        reference_s: seconds that count as one unit of lab time (one fluence scan), so a
            trial that costs only its measurement is not penalised.
    """

    def __init__(self, base: AcquisitionFunction, cost_s: Callable[[torch.Tensor], torch.Tensor], reference_s: float):
        super().__init__(model=base.model)
        self.base = base
        self._cost_s = cost_s
        self._ref = reference_s

    def batch_cost_s(self, X: torch.Tensor) -> torch.Tensor:
        """Seconds of each q-batch of ``X`` (``b x q x d -> b``): what ``forward`` divides by."""
        return self._cost_s(X).sum(-1)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.base(X) - torch.log(self.batch_cost_s(X) / self._ref)


class _ScatterAveraged(AcquisitionFunction):
    """A new film's log acquisition averaged over where its doping will come out.

    A new film's doping scatters around the request (sd ``sd_unit`` in unit-cube doping): the value
    of requesting ``d`` is the expected acquisition over ``d + sd z`` (Gauss-Hermite, ``nodes``
    points, clamped to the cube), ``log sum_k w_k exp(base(X_k))``. Points on an existing film
    (``is_new`` False) keep ``base(X)``: their doping is known.

    Args:
        base: a log acquisition function of ``b x q x d`` unit-cube points.
        sd_unit: the scatter's sd in unit-cube doping (> 0).
        is_new: ``b x q x d -> b`` bool, whether a q-batch asks for a new film.
        doping_col: the doping column of ``X``.
    """

    def __init__(self, base: AcquisitionFunction, sd_unit: float, is_new, doping_col: int = 1, nodes: int = 5):
        super().__init__(model=base.model)
        self.base = base
        self.is_new = is_new
        self.col = int(doping_col)
        z, w = np.polynomial.hermite_e.hermegauss(int(nodes))
        self.register_buffer("shifts", torch.tensor(z * float(sd_unit), dtype=DTYPE))
        self.register_buffer("log_w", torch.log(torch.tensor(w / w.sum(), dtype=DTYPE)))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        v0 = self.base(X)
        new = self.is_new(X)
        if not bool(new.any()):
            return v0
        vals = []
        for dz in self.shifts:
            Xk = X.clone()
            Xk[..., self.col] = (X[..., self.col] + dz).clamp(0.0, 1.0)
            vals.append(self.base(Xk))
        avg = torch.logsumexp(torch.stack(vals) + self.log_w.reshape(-1, *([1] * v0.dim())), dim=0)
        return torch.where(new, avg, v0)


class NestedOptimizer(Optimizer):
    """GP on ln(threshold) over (log stripe length, doping) with cost-aware qLogNEI (module docstring)."""

    strategy = "nested"
    joint = False

    def __init__(
        self,
        space: SearchSpace,
        *,
        n_init: int = 4,
        raw_samples: int = 256,
        num_restarts: int = 2,
        line_points: int = 64,
        mc_samples: int = 64,
        maxiter: int = 60,
        acq_maxiter: int = 15,
        min_rel_err: float = 0.01,
        default_rel_err: float = 0.05,
        cost_aware: bool = True,
        polish_margin: float = 0.5,
        film_rel_sd: float = 0.03,
        torch_threads: int | None = 1,
        prior: PriorMap | None = None,
        film_doping_sd: float = 0.0,
        **common: Any,
    ) -> None:
        """``common``: every strategy's keywords (``Optimizer``): ``seed``, ``cost``, ``objectives``,
        ``batch_size``, ``lab_state``. ``prior``: the twin's map of -ln threshold (``PriorMap``), the
        threshold GP's mean (``_prior.TwinPriorMean``); None: a constant mean. ``film_doping_sd``
        (electrons/dot): how far a new film's doping scatters around the request; > 0 averages a
        new film's acquisition over it (``_ScatterAveraged``), the sd estimated from the films made
        once two have a measured doping. The others tune the search (module docstring)."""
        super().__init__(space, **common)
        self.n_init = int(n_init)
        self.raw_samples = int(raw_samples)
        self.num_restarts = int(num_restarts)
        self.line_points = int(line_points)
        self.mc_samples = int(mc_samples)
        self.maxiter = int(maxiter)
        self.acq_maxiter = int(acq_maxiter)
        self.min_rel_err = float(min_rel_err)
        self.default_rel_err = float(default_rel_err)
        self.cost_aware = bool(cost_aware)
        self.polish_margin = float(polish_margin)
        self.film_rel_sd = float(film_rel_sd)
        self.torch_threads = torch_threads
        if prior is not None and not isinstance(prior, PriorMap):
            raise ParameterError(f"prior must be an optimizer.PriorMap or None, got {type(prior).__name__}")
        self.prior = prior
        if not (math.isfinite(film_doping_sd) and film_doping_sd >= 0):
            raise ParameterError(f"film_doping_sd must be a finite number >= 0 electrons/dot, got {film_doping_sd!r}")
        self.film_doping_sd = float(film_doping_sd)
        if prior is not None:
            self._last["prior"] = prior.source or "a twin map"
        self._design_cache: list[dict[str, float]] | None = None

    # ---- data -------------------------------------------------------------------------
    def _rows(self, status: str):
        return [r for r in self.history() if r.status == status]

    def _unit(self, params: Mapping[str, Any]) -> list[float]:
        return self.space.to_unit(params, NESTED_DIMS).tolist()

    def training_data(self) -> dict[str, torch.Tensor]:
        """Tensors the models see: ``X`` (n x 2), ``Y`` = -ln threshold (n x 1), ``Yvar`` (n x 1),
        ``X_sd`` (n x 2: the inputs' standard uncertainties, unit cube), ``X_infeasible`` (m x 2),
        and ``gnet`` rows when present.

        Inputs are the conditions as measured (``Optimizer.model_inputs``): a film's measured
        doping, its measurement error in ``X_sd``'s doping column."""
        done = [r for r in [*self._warm, *self._rows("completed")] if self.model_inputs(r) is not None]
        X, Xsd, Y, Yvar, G, Gvar, XG = [], [], [], [], [], [], []
        for r in done:
            thr = float(r.outcome["threshold_uJ_cm2"])
            err = _finite(r.outcome.get("threshold_err_uJ_cm2"))
            rel = self.default_rel_err if err is None else err / thr
            x, sd = self.model_inputs(r)
            X.append(x)
            Xsd.append(sd)
            Y.append([-math.log(thr)])
            Yvar.append([max(rel, self.min_rel_err) ** 2])
            g = _finite(r.outcome.get("gnet_per_cm"))
            if g is not None:
                XG.append(X[-1])
                G.append([g])
                ge = _finite(r.outcome.get("gnet_err_per_cm"))
                Gvar.append([max(ge if ge is not None else 0.05 * abs(g), 1e-6 + 0.01 * abs(g)) ** 2])
        inf = [m[0] for r in self._rows("infeasible") if (m := self.model_inputs(r)) is not None]

        def t(a, d=2):
            return torch.tensor(a, dtype=DTYPE) if a else torch.empty(0, d, dtype=DTYPE)

        Yt, Yvt = t(Y, 1), t(Yvar, 1)
        if Yt.shape[0] > 1:
            # keep the standardised noise above BoTorch's 1e-6 floor whatever the spread of Y
            Yvt = Yvt.clamp_min(1e-5 * float(Yt.var()))
        return {
            "X": t(X),
            "X_sd": t(Xsd),
            "Y": Yt,
            "Yvar": Yvt,
            "X_infeasible": t(inf),
            "X_gnet": t(XG),
            "gnet": t(G, 1),
            "gnet_var": t(Gvar, 1),
        }

    # ---- initial design ---------------------------------------------------------------
    def _design(self) -> list[dict[str, float]]:
        if self._design_cache is not None:
            return self._design_cache
        sp = self.space
        seed = self.trial_seed(_DESIGN_TAG)
        sob = SobolEngine(2, scramble=True, seed=seed).draw(self.n_init + 64, dtype=DTYPE)
        cur = self.initial_lab_state.current_doping
        if cur is not None:
            lo, hi = sp.doping_bounds
            d0_unit = sp.unit_doping(min(max(cur, lo), hi))
        else:
            d0_unit = float(sob[0, 1])
        d0 = sp.from_unit([0.0, d0_unit])[DOPING]
        first = sorted(float(u) for u in sob[: self.n_init, 0])
        design = [{LENGTH: sp.from_unit([u, 0.0])[LENGTH], DOPING: d0} for u in first]
        design += [sp.from_unit(row.tolist()) for row in sob[self.n_init :]]
        self._design_cache = design
        return design

    def _n_attempted(self) -> int:
        # abandoned trials count: their conditions are spent, never proposed again from the design
        return len(self._results) + len(self._pending)

    # ---- proposing --------------------------------------------------------------------
    def _propose(self, indices: list[int], seed: int) -> list[Proposal]:
        t0 = time.perf_counter()
        out: list[Proposal] = []
        state = self.lab_state()
        attempted = self._n_attempted()
        n_completed = len(self._rows("completed"))
        design = self._design()
        bo_indices = []
        for idx in indices:
            if attempted < self.n_init or n_completed < 2:
                point = design[min(attempted, len(design) - 1)]
                out.append(self._proposal(idx, point, state, predicted={"design": True}))
                state = state.after(out[-1].params)
                attempted += 1
            else:
                bo_indices.append(idx)
        if bo_indices:
            messages: list[str] = []
            self._last.pop("fallback", None)
            try:
                with manual_seed(seed), numerics(self.torch_threads, messages):
                    out += self._bo(bo_indices, seed, state, [self._unit(p.params) for p in out])
            except (NotPSDError, NanError, ModelFittingError) as err:
                # degenerate data (e.g. identical repeats): propose the next design points instead
                self._last["fallback"] = f"{type(err).__name__}: {err}"
                for idx in bo_indices:
                    point = design[min(attempted, len(design) - 1)]
                    out.append(self._proposal(idx, point, state, predicted={"design": True, "fallback": True}))
                    state = state.after(out[-1].params)
                    attempted += 1
            self._last["numerics"] = {"n_messages": len(messages), "last": messages[-5:]}
        self._last["suggest_s"] = time.perf_counter() - t0
        return out

    def _fit(self, data):
        """Threshold GP (+ gnet GP, + feasibility GP). Returns (model, index map, fit messages)."""
        messages: list[str] = []
        film = None
        if self.film_rel_sd > 0:
            lo, hi = self.space.doping_bounds
            width = self.cost.film_doping_tol / (hi - lo) if hi > lo else 1.0
            film = (1, max(width, 1e-4), self.film_rel_sd)
        thr_gp, info, _ = fit_gp_input_noise(
            data["X"],
            data["Y"],
            data["Yvar"],
            data["X_sd"],
            maxiter=self.maxiter,
            film=film,
            prior=None if self.prior is None else (self.prior, self.space),
        )
        messages += info.messages
        models = [thr_gp]
        index = {"threshold": 0}
        hyper = {"threshold": gp_hyperparameters(thr_gp, NESTED_DIMS)}
        if "gnet" in self.objectives and data["gnet"].shape[0] >= 2:
            g_gp, info = fit_gp(data["X_gnet"], data["gnet"], data["gnet_var"], maxiter=self.maxiter)
            messages += info.messages
            index["gnet"] = len(models)
            models.append(g_gp)
            hyper["gnet"] = gp_hyperparameters(g_gp, NESTED_DIMS)
        if data["X_infeasible"].shape[0] > 0:
            Xf = torch.cat([data["X"], data["X_infeasible"]])
            n_ok, n_bad = data["X"].shape[0], data["X_infeasible"].shape[0]
            labels = torch.cat([torch.ones(n_ok, 1, dtype=DTYPE), -torch.ones(n_bad, 1, dtype=DTYPE)])
            f_gp, info = fit_gp(Xf, labels, None, maxiter=self.maxiter)
            messages += info.messages
            index["feasible"] = len(models)
            models.append(f_gp)
            hyper["feasible"] = gp_hyperparameters(f_gp, NESTED_DIMS)
        model = models[0] if len(models) == 1 else ModelListGP(*models)
        return model, index, hyper, messages

    def _acquisition(self, model, index, data, X_pending, seed):
        limit_log = math.log(self.space.fluence_limit_uJ_cm2)
        i_thr = index["threshold"]
        constraints = [lambda Z: -Z[..., i_thr] - limit_log]
        if "feasible" in index:
            i_f = index["feasible"]
            constraints.append(lambda Z: -Z[..., i_f])
        sampler = SobolQMCNormalSampler(sample_shape=torch.Size([self.mc_samples]), seed=seed)
        if "gnet" in index:
            keep = []
            Xg = data["X_gnet"]
            for row in Xg:
                keep.append(bool(((data["X"] - row).abs().sum(-1) < 1e-12).any()))
            Xb = torch.unique(Xg[torch.tensor(keep)], dim=0)
            if Xb.shape[0] >= 2:
                with torch.no_grad():
                    post = model.posterior(Xb)
                    obj = post.mean[..., [i_thr, index["gnet"]]]
                front = obj[is_non_dominated(obj)]
                ref = infer_reference_point(front)
                return qLogNoisyExpectedHypervolumeImprovement(
                    model=model,
                    ref_point=ref,
                    X_baseline=Xb,
                    sampler=sampler,
                    objective=IdentityMCMultiOutputObjective(outcomes=[i_thr, index["gnet"]]),
                    constraints=constraints,
                    X_pending=X_pending,
                    prune_baseline=True,
                )
        objective = GenericMCObjective(lambda Z, X=None: Z[..., i_thr]) if isinstance(model, ModelListGP) else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", BotorchWarning)
            acq = qLogNoisyExpectedImprovement(
                model=model,
                # repeated trials at one point would make the baseline's joint covariance singular
                X_baseline=torch.unique(data["X"], dim=0),
                sampler=sampler,
                objective=objective,
                constraints=constraints,
                X_pending=X_pending,
                prune_baseline=True,
                cache_root=True,
            )
        for w in caught:
            if issubclass(w.category, BotorchWarning) and "all training points are infeasible" in str(w.message):
                # no measured point is (probably) feasible: first find the feasible region, as BoTorch advises
                return qLogProbabilityOfFeasibility(
                    model=model, constraints=constraints, sampler=sampler, objective=objective, X_pending=X_pending
                )
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return acq

    def _options(self, state: LabState) -> list[float]:
        """Unit dopings optimised as fixed 1-D problems: the library levels, or the existing films."""
        sp = self.space
        if sp.discrete:
            return [sp.unit_doping(d) for d in sp.doping]
        lo, hi = sp.doping_bounds
        return [sp.unit_doping(d) for d in state.films if lo <= d <= hi]

    def _maximise(self, acq: AcquisitionFunction, state: LabState, seed: int):
        """Best unit-cube point (2,) and its score; see the module docstring."""
        gen = torch.Generator().manual_seed(seed)
        fixed = self._options(state)
        cand = []
        if fixed:
            n = self.line_points
            u = (torch.arange(n, dtype=DTYPE) + torch.rand(1, generator=gen, dtype=DTYPE)) / n
            for ud in fixed:
                cand.append(torch.stack([u, torch.full_like(u, ud)], dim=-1))
        n_fixed = sum(c.shape[0] for c in cand)
        if not self.space.discrete:
            cand.append(SobolEngine(2, scramble=True, seed=seed).draw(self.raw_samples, dtype=DTYPE))
        C = torch.cat(cand).unsqueeze(-2)  # N x 1 x 2
        with torch.no_grad():
            scores = torch.cat([acq(chunk) for chunk in C.split(512)])
        best_x, best_s = None, -math.inf
        if n_fixed:
            # a film's option is 1-D: refine the best line point on a finer local line (no gradients)
            j = int(torch.argmax(scores[:n_fixed]))
            x0 = C[j, 0]
            step = 1.0 / self.line_points
            u = (x0[0] + torch.linspace(-step, step, 17, dtype=DTYPE)).clamp(0.0, 1.0)
            local = torch.stack([u, torch.full_like(u, float(x0[1]))], dim=-1).unsqueeze(-2)
            with torch.no_grad():
                ls = acq(local)
            k = int(torch.argmax(ls))
            if float(ls[k]) >= float(scores[j]):
                best_x, best_s = local[k, 0].clone(), float(ls[k])
            else:
                best_x, best_s = x0.clone(), float(scores[j])
        if C.shape[0] > n_fixed:
            free = scores[n_fixed:]
            raw_best = float(free.max())
            # polish the free (new-film) option when it leads or comes close
            if best_x is None or raw_best >= best_s - self.polish_margin:
                top = n_fixed + torch.topk(free, min(self.num_restarts, free.numel())).indices
                x0 = C[top]  # k x 1 x 2
                xs, vals = gen_candidates_scipy(
                    x0,
                    acq,
                    lower_bounds=torch.zeros(2, dtype=DTYPE),
                    upper_bounds=torch.ones(2, dtype=DTYPE),
                    options={"maxiter": self.acq_maxiter, "maxls": 10},
                )
                vals = torch.where(torch.isfinite(vals), vals, torch.full_like(vals, -math.inf))
                k = int(torch.argmax(vals))
                cand_x, cand_s = (xs[k, 0].detach().clone(), float(vals[k]))
                if cand_s < raw_best:  # never accept a polished point worse than its best start
                    cand_x, cand_s = C[top[0], 0].clone(), raw_best
                if cand_s > best_s:
                    best_x, best_s = cand_x, cand_s
        return best_x, best_s

    def _bo(self, indices: list[int], seed: int, state: LabState, batch_units: list[list[float]]) -> list[Proposal]:
        data = self.training_data()
        t0 = time.perf_counter()
        model, index, hyper, messages = self._fit(data)
        fit_s = time.perf_counter() - t0
        pend = [self._unit(p.params) for p in self.pending()] + list(batch_units)
        out: list[Proposal] = []
        last = []
        meas = self.cost.measurement_s(joint=False)
        for k, idx in enumerate(indices):
            X_pending = torch.tensor(pend, dtype=DTYPE) if pend else None
            base = self._acquisition(model, index, data, X_pending, seed + k)
            sd = self._film_scatter_sd()
            if sd > 0 and not self.space.discrete:
                lo, hi = self.space.doping_bounds
                base = _ScatterAveraged(base, sd / (hi - lo), functools.partial(self._is_new_film, state=state))
            weighted = _PerCost(base, functools.partial(self.expected_cost_s, state=state), meas)
            acq = weighted if self.cost_aware else base
            x, _ = self._maximise(acq, state, seed + 7919 * (k + 1))
            params = self._snap(self.space.from_unit(x.tolist()), state)
            xu = torch.tensor([self._unit(params)], dtype=DTYPE)
            with torch.no_grad():
                log_acq = float(base(xu.unsqueeze(0)))
                weighed_s = float(weighted.batch_cost_s(xu.unsqueeze(0)))  # the acquisition's cost here
                expected = self.cost.trial_cost_s(params, state)  # the proposal's record: the same model
                post = (model.models[index["threshold"]] if isinstance(model, ModelListGP) else model).posterior(xu)
                mean, var = float(post.mean), float(post.variance)
            thr = math.exp(-mean)
            predicted = {"threshold_uJ_cm2": thr, "threshold_err_uJ_cm2": thr * math.sqrt(max(var, 0.0))}
            if "feasible" in index:
                with torch.no_grad():
                    fp = model.models[index["feasible"]].posterior(xu)
                    z = float(fp.mean) / math.sqrt(max(float(fp.variance), 1e-12))
                predicted["p_lasing"] = 0.5 * math.erfc(-z / math.sqrt(2.0))
            value = log_acq - (math.log(expected / meas) if self.cost_aware else 0.0)
            full = self._params(params)
            out.append(
                Proposal(
                    trial_index=idx,
                    params=full,
                    predicted=predicted,
                    expected_cost_s=expected,
                    acquisition_value=value,
                    strategy=self.strategy,
                )
            )
            last.append({"trial_index": idx, "log_acquisition": log_acq, "cost_s": weighed_s, "value": value})
            pend.append(self._unit(params))
            state = state.after(full)
        self._last.update(
            {
                "model": hyper,
                "fit_messages": messages[-10:],
                "fit_s": fit_s,
                "last_acquisition": last,
                "n_training": int(data["X"].shape[0]),
                "n_infeasible": int(data["X_infeasible"].shape[0]),
            }
        )
        return out

    def _is_new_film(self, X: torch.Tensor, state: LabState) -> torch.Tensor:
        """Whether each q-batch of unit-cube ``X`` (``b x q x 2``) asks for a doping with no film (``b``)."""
        doping = self.space.from_unit_tensor(X)[DOPING]
        return (self.cost.film_cost_s(doping, state) >= self.cost.new_film_s).any(-1)

    def _film_scatter_sd(self) -> float:
        """The new films' doping scatter (electrons/dot): the rms of measured - requested over the films
        made once there are two, else ``film_doping_sd``; 0 when that is 0 (off)."""
        if self.film_doping_sd <= 0:
            return 0.0
        offsets = {}
        for r in self.history():
            req = _finite(r.params.get(DOPING))
            got = _finite((r.observed_params or {}).get(DOPING))
            if req is not None and got is not None and abs(req - got) > 0:
                offsets[round(got, 9)] = got - req  # one per film (its first trial: requested vs measured)
        if len(offsets) >= 2:
            return max(math.sqrt(sum(v * v for v in offsets.values()) / len(offsets)), 0.01)
        return self.film_doping_sd

    def posterior(self, stripe_length_um: ArrayLike, doping: ArrayLike) -> dict[str, Any]:
        """The threshold model's posterior at (stripe length, doping) points.

        The model is the one the next ``suggest`` fits: the threshold GP refitted on the
        history under the same seed, so at a proposal's parameters it gives that
        proposal's ``predicted`` threshold. It models ``y = -ln(threshold_uJ_cm2)``; the
        posterior is reported on the threshold scale.

        Args:
            stripe_length_um: stripe lengths (um), an array-like broadcastable with ``doping``.
            doping: dopings (electrons/dot). Points outside the search space are
                extrapolated, not refused.

        Returns:
            A dict with ``threshold_uJ_cm2``, the posterior median threshold ``exp(-E[y])``
            (uJ/cm^2), and ``sd_ln_threshold``, the posterior standard deviation of
            ``ln threshold`` (dimensionless, about the relative uncertainty), each a float64
            array of the inputs' broadcast shape; ``n_thresholds``, the number of measured
            thresholds the model was fitted on; ``messages``, the fit's and the prediction's
            numerical warnings (recorded as in ``state()``, not raised).

        Raises:
            NotEnoughDataError: the history holds fewer than two usable thresholds.
        """
        lengths, dopings = np.broadcast_arrays(
            np.asarray(stripe_length_um, dtype=np.float64), np.asarray(doping, dtype=np.float64)
        )
        data = self.training_data()
        n = int(data["X"].shape[0])
        if n < 2:
            raise NotEnoughDataError(f"{n} usable threshold(s) in the history; the threshold model needs at least 2")
        pairs = zip(lengths.ravel().tolist(), dopings.ravel().tolist(), strict=True)
        units = [self._unit({LENGTH: length, DOPING: d}) for length, d in pairs]  # as the training inputs
        X = torch.tensor(units, dtype=DTYPE).reshape(-1, len(NESTED_DIMS))
        messages: list[str] = []
        with manual_seed(self.trial_seed(self.next_trial_index())), numerics(self.torch_threads, messages):
            model, index, _hyper, fit_messages = self._fit(data)
            messages += fit_messages
            gp = model.models[index["threshold"]] if isinstance(model, ModelListGP) else model
            with torch.no_grad():
                post = gp.posterior(X)
                mean = post.mean.reshape(lengths.shape).numpy()
                sd = post.variance.clamp_min(0.0).sqrt().reshape(lengths.shape).numpy()
        return {
            "threshold_uJ_cm2": np.exp(-mean),
            "sd_ln_threshold": sd,
            "n_thresholds": n,
            "messages": messages,
        }

    def pareto(self) -> list[dict]:
        """Measured non-dominated trials in (lowest threshold, highest gnet_per_cm)."""
        rows = [r for r in self._rows("completed") if _finite(r.outcome.get("gnet_per_cm")) is not None]
        if not rows:
            return []
        obj = torch.tensor(
            [[-float(r.outcome["threshold_uJ_cm2"]), float(r.outcome["gnet_per_cm"])] for r in rows], dtype=DTYPE
        )
        mask = is_non_dominated(obj)
        return [
            {
                "trial_index": r.trial_index,
                "threshold_uJ_cm2": float(r.outcome["threshold_uJ_cm2"]),
                "gnet_per_cm": float(r.outcome["gnet_per_cm"]),
                LENGTH: float(r.params[LENGTH]),
                DOPING: float(r.params[DOPING]),
            }
            for r, m in zip(rows, mask.tolist(), strict=True)
            if m
        ]
