"""The array namespace of the twin's equations: numpy, or torch (float64) for the differentiable twin.

The physics functions of ``twin`` are written once against a small namespace ``xp``
taken from their inputs (``namespace(*values)``): numpy itself for numpy inputs and
Python floats (so the numpy twin runs exactly the code it always ran, at the same
speed), or ``TORCH`` (a thin adapter with numpy's names over torch) as soon as one
input is a ``torch.Tensor``. torch is never imported by the numpy path.

Parameters (a ``Sample``'s fields) may be torch scalars (``twin.differentiable``
builds such samples): the arithmetic between them and the arrays is the same
expression in both backends, and autograd follows it.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

__all__ = ["TORCH", "is_tensor", "make_dual", "namespace", "to_numpy"]


def is_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch tensor (without importing torch)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def namespace(*values: Any):
    """``TORCH`` if any value is a torch tensor, else numpy."""
    torch = sys.modules.get("torch")
    if torch is not None:
        for v in values:
            if isinstance(v, torch.Tensor):
                return TORCH
    return np


def to_numpy(value: Any) -> np.ndarray | None:
    """A float array of the value's numbers (a tensor is detached), for validation and messages.

    None for a tensor inside a ``torch.func`` transform (``vmap``), whose values cannot be read:
    there the caller has validated the inputs before the transform (``twin.calibration``)."""
    if is_tensor(value):
        try:
            return value.detach().cpu().numpy().astype(float)
        except RuntimeError:  # a functorch-wrapped tensor (vmap/grad): no values to read
            return None
    return np.asarray(value, dtype=float)


def make_dual(primal, tangent):
    """``torch.autograd.forward_ad.make_dual`` (inside a ``dual_level``): a tensor carrying a forward-mode tangent.

    The first call makes torch load its forward-mode decompositions, which compile with ``torch.jit.script``
    and warn that it is deprecated (torch's own code, nothing of ours): that one warning is not shown."""
    import warnings

    import torch.autograd.forward_ad as fwd

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=DeprecationWarning)
        return fwd.make_dual(primal, tangent)


def gather(table, index):
    """``table[index]`` of a 1-D torch table for an integer index tensor of any shape: indexing with a
    trailing axis, which ``torch.func.vmap`` batches natively (``take`` and 0-d indices it does not)."""
    return table[index.unsqueeze(-1)].squeeze(-1)


class _TorchNamespace:
    """numpy's names over torch, float64, for the functions the twin's equations use."""

    newaxis = None
    inf = float("inf")
    pi = np.pi

    @property
    def _t(self):
        import torch

        return torch

    def asarray(self, x, dtype=float):
        t = self._t
        if isinstance(x, t.Tensor):
            return x if x.dtype == t.float64 else x.to(t.float64)
        return t.as_tensor(np.array(x, dtype=float), dtype=t.float64)

    def _both(self, a, b):
        t = self._t
        a = a if isinstance(a, t.Tensor) else t.as_tensor(a, dtype=t.float64)
        b = b if isinstance(b, t.Tensor) else t.as_tensor(b, dtype=t.float64)
        return a, b

    def exp(self, x):
        return self._t.exp(self.asarray(x))

    def log(self, x):
        return self._t.log(self.asarray(x))

    def expm1(self, x):
        return self._t.expm1(self.asarray(x))

    def log1p(self, x):
        return self._t.log1p(self.asarray(x))

    def sqrt(self, x):
        return self._t.sqrt(self.asarray(x))

    def abs(self, x):
        return self._t.abs(self.asarray(x))

    def power(self, a, b):
        a, b = self._both(a, b)
        return self._t.pow(a, b)

    def logaddexp(self, a, b):
        return self._t.logaddexp(*self._both(a, b))

    def maximum(self, a, b):
        return self._t.maximum(*self._both(a, b))

    def minimum(self, a, b):
        return self._t.minimum(*self._both(a, b))

    def where(self, cond, a, b):
        if not is_tensor(cond):  # a numpy mask (e.g. of integer state counts)
            cond = self._t.as_tensor(np.asarray(cond, dtype=bool))
        return self._t.where(cond, *self._both(a, b))

    def broadcast_arrays(self, *xs):
        return self._t.broadcast_tensors(*(self.asarray(x) for x in xs))

    def zeros_like(self, x):
        return self._t.zeros_like(self.asarray(x))

    def full(self, shape, value):
        return self._t.full(tuple(shape), float(value), dtype=self._t.float64)

    def isfinite(self, x):
        return self._t.isfinite(self.asarray(x))

    def interp(self, x, xp_tab, fp_tab):
        """``numpy.interp`` (x clipped to the table's ends), differentiable in x."""
        t = self._t
        xt = self.asarray(x)
        xs = self.asarray(xp_tab)
        fs = self.asarray(fp_tab)
        xc = t.clamp(xt, xs[0], xs[-1])
        i = t.clamp(t.searchsorted(xs, xc.detach(), right=True) - 1, 0, len(xs) - 2)
        x0, x1, f0, f1 = (gather(t_, j) for t_, j in ((xs, i), (xs, i + 1), (fs, i), (fs, i + 1)))
        return f0 + (f1 - f0) * (xc - x0) / (x1 - x0)

    def gather(self, table, index):
        """``table[index]`` for an integer index tensor of any shape (0-d included, also under ``vmap``)."""
        return gather(table, index)

    def logsumexp_rows(self, x):
        return self._t.logsumexp(x, dim=-1)


#: numpy's names over torch (float64): the namespace of a differentiable evaluation.
TORCH = _TorchNamespace()
