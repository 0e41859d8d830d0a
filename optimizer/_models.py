"""Gaussian-process helpers shared by the strategies (BoTorch, double precision, unit-cube inputs).

``fit_gp`` builds a ``SingleTaskGP`` on unit-cube inputs ``X`` (``n x d``, float64) and
outcomes ``Y`` (``n x 1``) with a ``Standardize`` outcome transform, either with fixed
heteroscedastic noise ``Yvar`` (``n x 1``, in the units of ``Y``) or with a learned
homoscedastic noise, and fits it by maximum marginal likelihood (BoTorch's defaults:
RBF kernel with dimension-scaled log-normal length-scale prior; optionally plus the fixed
film-to-film term of ``FilmKernel``).

``fit_gp_input_noise`` is ``fit_gp`` for inputs measured with an uncertainty (e.g. a film's
doping from its absorption): the noisy-input GP (NIGP) of McHutchon & Rasmussen (2011) to first
order -- an input error ``sigma_x`` moves the output by about ``(d mu / dx) sigma_x``, so each
observation's noise gains ``sum_j (d mu / d x_j)^2 sigma_xj^2`` from the slope of the GP's
posterior mean at its input, and the GP is refitted with that noise.

Fitting never raises: optimiser warnings are recorded (not swallowed) in the returned
``FitInfo`` so the campaign can log them, and if every fitting attempt fails the model
keeps its prior hyperparameters (``FitInfo.ok`` is False, with the reason). The same data
always give the same model: fitting starts from the same initial hyperparameters and any
random restarts run under the caller's seed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from botorch.exceptions.errors import ModelFittingError
from botorch.exceptions.warnings import BotorchWarning, OptimizationWarning
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.transforms.outcome import Standardize
from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior
from gpytorch.kernels import Kernel
from gpytorch.mlls import ExactMarginalLogLikelihood
from linear_operator import to_dense
from linear_operator.utils.errors import NotPSDError
from linear_operator.utils.warnings import NumericalWarning

from ._prior import TwinPriorMean

__all__ = [
    "DTYPE",
    "FilmKernel",
    "FitInfo",
    "fit_gp",
    "fit_gp_input_noise",
    "gp_hyperparameters",
    "input_noise_variance",
    "numerics",
]

DTYPE = torch.float64
_LOW_RANK = "Low-rank cholesky updates failed"


@dataclass
class FitInfo:
    """How a fit went: ``ok`` (False: prior hyperparameters kept), ``messages`` (warnings, errors)."""

    ok: bool = True
    messages: list[str] = field(default_factory=list)


@contextmanager
def numerics(threads: int | None, messages: list[str]) -> Iterator[None]:
    """Run model work on ``threads`` torch threads (restored after; None: leave as is) and record
    BoTorch's numerical warnings -- Cholesky jitter on near-duplicate points, an L-BFGS-B line
    search that ends early on a flat log-acquisition surface -- in ``messages`` instead of
    letting them abort a campaign. Any other warning is re-emitted unchanged.

    qLogNEI's cached low-rank Cholesky update falling back to standard sampling on an
    ill-conditioned covariance (a candidate on top of a measured point) is recorded the same way.

    One thread is the default for the small matrices here: on a shared 2-core machine extra
    threads mostly wait for each other (measured: 0.1 s vs 0.2-1 s per fit at 100 points).
    """
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NumericalWarning)
            warnings.simplefilter("always", OptimizationWarning)
            warnings.filterwarnings("always", message=_LOW_RANK, category=BotorchWarning)
            yield
    finally:
        torch.set_num_threads(old)
    for w in caught:
        numerical = issubclass(w.category, NumericalWarning | OptimizationWarning)
        if numerical or (issubclass(w.category, BotorchWarning) and str(w.message).startswith(_LOW_RANK)):
            messages.append(f"{w.category.__name__}: {w.message}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


class FilmKernel(Kernel):
    """BoTorch's default RBF kernel plus film-to-film variation on one input column.

    ``k(x, x') = rbf(x, x') + film_variance * exp(-(u - u')^2 / (2 film_width^2))`` with ``u`` the
    doping column ``film_dim``. With ``film_width`` the film tolerance in unit-cube doping, trials
    on one film share one offset and different films have independent offsets. The film terms
    are fixed (not fitted): one offset per film cannot be told apart from the smooth landscape
    by a handful of films. One kernel module instead of ``RBF + Scale(RBF)`` halves the
    per-iteration overhead of the fit.
    """

    has_lengthscale = False

    def __init__(self, ard_num_dims: int, film_dim: int, film_width: float, film_variance: float) -> None:
        super().__init__()
        self.rbf = get_covar_module_with_dim_scaled_prior(ard_num_dims=ard_num_dims)
        self.film_dim = int(film_dim)
        self.register_buffer("film_width", torch.tensor(float(film_width), dtype=DTYPE))
        self.register_buffer("film_variance", torch.tensor(float(film_variance), dtype=DTYPE))

    @property
    def lengthscale(self) -> torch.Tensor:
        return self.rbf.lengthscale

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False, **params) -> torch.Tensor:
        k = self.rbf.forward(x1, x2, diag=diag, **params)
        u1, u2 = x1[..., self.film_dim], x2[..., self.film_dim]
        if diag:
            film = self.film_variance * torch.ones_like(u1)
        else:
            film = self.film_variance * torch.exp(-0.5 * ((u1.unsqueeze(-1) - u2.unsqueeze(-2)) / self.film_width) ** 2)
        return to_dense(k) + film


def fit_gp(
    X: torch.Tensor,
    Y: torch.Tensor,
    Yvar: torch.Tensor | None = None,
    *,
    maxiter: int = 200,
    film: tuple[int, float, float] | None = None,
    prior=None,
):
    """Fit a GP on ``X`` (``n x d`` unit cube), ``Y`` (``n x 1``), optional ``Yvar`` (``n x 1``).

    ``film``: ``(doping column, width, sd in Y units)`` uses ``FilmKernel`` (BoTorch's default
    kernel plus film-to-film variation) (the sd is converted to standardised units with the data's spread).
    ``prior``: ``(PriorMap, SearchSpace)`` makes the mean the twin's map with a learnable offset,
    scale and shift (``_prior.TwinPriorMean``) instead of a constant.
    Returns ``(model, FitInfo)``; the model is in eval mode.
    """
    info = FitInfo()
    with warnings.catch_warnings(record=True) as caught:
        # Cholesky jitter on nearly duplicated inputs is a property of the data, not a bug:
        # record it with the fit instead of failing the campaign.
        warnings.simplefilter("always", NumericalWarning)
        covar = None
        if film is not None:
            dim, width, sd = film
            # in standardised units, with the spread Standardize will use (1 when Y is constant)
            spread = float(Y.std()) if Y.shape[0] > 1 else 1.0
            spread = spread if spread >= 1e-8 else 1.0
            covar = FilmKernel(X.shape[-1], dim, width, min((sd / spread) ** 2, 1e4)).to(DTYPE)
        mean = None
        if prior is not None:
            prior_map, space = prior
            y_sd = float(Y.std()) if Y.shape[0] > 1 else 1.0
            y_sd = y_sd if y_sd >= 1e-8 else 1.0
            mean = TwinPriorMean(prior_map, space, float(Y.mean()), y_sd).to(DTYPE)
        model = SingleTaskGP(
            X,
            Y,
            train_Yvar=Yvar,
            covar_module=covar,
            mean_module=mean,
            outcome_transform=Standardize(m=Y.shape[-1]),
        )
        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        if mean is not None:
            _start_prior_mean(model, mll, mean, X)

        def handler(w: warnings.WarningMessage) -> bool:
            # resolve every optimiser warning here (recorded), so none escapes as an error
            info.messages.append(f"{w.category.__name__}: {w.message}")
            return True

        try:
            fit_gpytorch_mll(
                mll,
                optimizer_kwargs={"options": {"maxiter": maxiter}},
                warning_handler=handler,
                caught_exception_types=(NotPSDError,),
            )
        except (ModelFittingError, NotPSDError, RuntimeError) as err:
            info.ok = False
            info.messages.append(f"fit failed, prior hyperparameters kept: {err}")
            model.eval()
    for w in caught:
        if issubclass(w.category, NumericalWarning | OptimizationWarning):
            info.messages.append(f"{w.category.__name__}: {w.message}")
        else:  # anything else is unexpected: re-emit it
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return model, info


def _start_prior_mean(model, mll, mean: TwinPriorMean, X: torch.Tensor) -> None:
    """Start the twin prior's fit at the best of a few family members (the likelihood is not convex in
    the family parameter), each with the twin's level (offset 0) or the data's."""
    best = None
    model.train()
    with torch.no_grad():
        for t in mean.family_starts():
            if mean.n_family > 1:
                mean._set_family(t)
            level = float(mean.y_mean) - float(mean.map_at(X).mean())  # the offset that matches the data
            for offset in (0.0, level):
                mean._set("offset", offset)
                try:
                    value = float(mll(model(*model.train_inputs), model.train_targets))
                except (NotPSDError, RuntimeError):
                    continue
                if math.isfinite(value) and (best is None or value > best[0]):
                    best = (value, t, offset)
        if best is not None:
            if mean.n_family > 1:
                mean._set_family(best[1])
            mean._set("offset", best[2])
    model.eval()


def input_noise_variance(model, X: torch.Tensor, X_sd: torch.Tensor) -> torch.Tensor:
    """The output variance input errors cause at ``X``: ``sum_j (d mu / d x_j)^2 X_sd_j^2`` (``n x 1``).

    ``model``: a fitted single-output GP; ``mu`` its posterior mean in the units of its training
    outcomes (the outcome transform undone). ``X`` (``n x d``) unit-cube inputs, ``X_sd``
    (``n x d``) their standard uncertainties in the same units (0 where exact). The slope is
    the mean's gradient at each point alone (each row's mean depends on its own input only).
    """
    Xg = X.detach().clone().requires_grad_(True)
    mean = model.posterior(Xg).mean.sum()
    (grad,) = torch.autograd.grad(mean, Xg)
    return (grad.detach() ** 2 * X_sd.to(grad) ** 2).sum(-1, keepdim=True)


def fit_gp_input_noise(
    X: torch.Tensor,
    Y: torch.Tensor,
    Yvar: torch.Tensor | None = None,
    X_sd: torch.Tensor | None = None,
    *,
    iterations: int = 1,
    maxiter: int = 200,
    film: tuple[int, float, float] | None = None,
    prior=None,
):
    """``fit_gp`` with input noise (NIGP, module docstring): ``X_sd`` (``n x d``) the inputs' standard
    uncertainties in unit-cube units, 0 where an input is exact.

    The GP is fitted as ``fit_gp`` would, then refitted ``iterations`` times with the noise
    ``Yvar + input_noise_variance(model, X, X_sd)``, the slope taken from the previous fit. With
    learned noise (``Yvar`` None) the first fit's learned noise (in ``Y`` units) is the base. With
    no input error (``X_sd`` None or all zero) it is exactly ``fit_gp``.

    Trials on one film share its doping error, which this treats as independent per trial: with
    several trials on a film the posterior is somewhat too sure of that film's doping (the
    film-to-film term of ``FilmKernel`` carries a shared offset per film besides).

    Returns ``(model, FitInfo, Yvar_eff)``: the model (eval mode), how the fits went, and the
    observation noise variance it was fitted with (``n x 1``, ``Y`` units; None when ``fit_gp``'s
    learned noise was kept).
    """
    model, info = fit_gp(X, Y, Yvar, maxiter=maxiter, film=film, prior=prior)
    if X_sd is None or X.shape[0] == 0 or not bool((X_sd > 0).any()):
        return model, info, Yvar
    X_sd = X_sd.to(X).clamp_min(0.0)
    if Yvar is None:
        noise = model.likelihood.noise.detach().reshape(-1)[:1]
        scale = model.outcome_transform.stdvs.detach().reshape(-1)[:1] ** 2
        base = (noise * scale).expand(X.shape[0]).unsqueeze(-1).to(X)
    else:
        base = Yvar
    Yvar_eff = base
    for _ in range(max(int(iterations), 1)):
        try:
            extra = input_noise_variance(model, X, X_sd)
        except (NotPSDError, RuntimeError) as err:
            info.messages.append(f"input noise not added (the mean's slope failed): {err}")
            return model, info, Yvar_eff
        Yvar_eff = base + extra
        model, more = fit_gp(X, Y, Yvar_eff, maxiter=maxiter, film=film, prior=prior)
        info.ok = info.ok and more.ok
        info.messages += more.messages
    return model, info, Yvar_eff


def gp_hyperparameters(model: SingleTaskGP, names: tuple[str, ...]) -> dict:
    """Length-scales (unit-cube units, per input name), noise and output scale (standardised units)."""
    covar = model.covar_module
    extra = {}
    if isinstance(covar, FilmKernel):
        extra["film_variance"] = float(covar.film_variance)
        covar = covar.rbf
    outputscale = 1.0
    base = covar
    if hasattr(covar, "outputscale"):
        outputscale = float(covar.outputscale.detach())
        base = covar.base_kernel
    ls = base.lengthscale.detach().reshape(-1).tolist()
    noise = model.likelihood.noise.detach().reshape(-1)
    if isinstance(model.mean_module, TwinPriorMean):
        extra["prior_mean"] = model.mean_module.state()
    return {
        "lengthscales": {n: float(v) for n, v in zip(names, ls, strict=False)},
        "noise": float(noise.median()) if noise.numel() else math.nan,
        "noise_kind": "fixed (heteroscedastic, median)" if noise.numel() > 1 else "learned",
        "outputscale": outputscale,
        **extra,
    }
