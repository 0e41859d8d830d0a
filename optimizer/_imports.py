"""Import BoTorch's stack once, tolerating one known third-party deprecation.

linear_operator 0.6 decorates a few helpers with ``torch.jit.script`` at import time,
which torch 2.13 deprecates with a ``DeprecationWarning``. It is harmless (the helpers
still run) and not ours to fix; this module imports the stack with exactly that warning
filtered (by category and message), so a test run with warnings as errors still fails on
any other warning. Every optimiser module imports BoTorch after this one.
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r".torch\.jit\.script. is deprecated", category=DeprecationWarning)
    import botorch  # noqa: F401
    import gpytorch  # noqa: F401
    import linear_operator  # noqa: F401
