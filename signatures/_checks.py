"""Checks of user choices shared by the config and the model builders (no TensorFlow).

Every check raises ``ValueError`` whose message names the choice with the word the user
sees (``what``), the bad value and what is allowed.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu", "selu", "gelu", "swish", "linear")

#: Most units in one dense layer, and most filters in one conv block. A larger layer
#: of a model trained on a shared server runs it out of memory (``--hidden 100000000``).
MAX_UNITS = 4096

#: Most hidden layers (dense sizes or conv blocks) in one model.
MAX_LAYERS = 16


def is_int(value):
    """True for an integer (Python or numpy), False for bools, floats, strings and the rest."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def check_int(value, what, *, low=None, high=None, allow_float=False, hint=""):
    """``value`` as an int in ``low..high``; ValueError naming ``what`` otherwise.

    Parameters
    ----------
    value : object
    what : str
        The word the user sees for this choice, e.g. ``"--seed"`` or ``"seed"``.
    low, high : int, optional
        Inclusive bounds.
    allow_float : bool
        Accept a float with an integral value (``100.0``), as a text field may give.
    hint : str
        Appended to the allowed range (e.g. ``", or empty for all images"``).

    Returns
    -------
    int
    """
    if low is not None and high is not None:
        allowed = f"a whole number from {low} to {high}"
    elif low is not None:
        allowed = f"a whole number >= {low}"
    elif high is not None:
        allowed = f"a whole number <= {high}"
    else:
        allowed = "a whole number"
    if is_int(value):
        number = int(value)
    elif (allow_float and isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
          and float(value).is_integer()):
        number = int(value)
    else:
        raise ValueError(f"{what} must be {allowed}{hint}, got {value!r}")
    if (low is not None and number < low) or (high is not None and number > high):
        raise ValueError(f"{what} must be {allowed}{hint}, got {number}")
    return number


def parse_hidden(hidden, *, what="hidden sizes", max_size=MAX_UNITS, max_layers=MAX_LAYERS):
    """Validate layer sizes (dense units or conv filters).

    Parameters
    ----------
    hidden : sequence of int or str
        For example ``(64, 32)`` or ``"64 32"`` / ``"64,32"``.
    what : str
        The word the user sees for these sizes (``"hidden sizes"``, ``"conv filters"``,
        ``"--filters"``); every message names it.
    max_size : int
        Largest size allowed (:data:`MAX_UNITS`).
    max_layers : int
        Most sizes allowed (:data:`MAX_LAYERS`).

    Returns
    -------
    tuple of int
    """
    if isinstance(hidden, str):
        parts = [p for p in hidden.replace(",", " ").split() if p]
    elif isinstance(hidden, (list, tuple)) or (isinstance(hidden, np.ndarray) and hidden.ndim == 1):
        parts = list(hidden)
    else:
        raise ValueError(f"{what} must be a list of layer sizes, e.g. 64 32; got {hidden!r}")
    if not parts:
        raise ValueError(f"{what} must list at least one layer size, e.g. 64 32; got none")
    if len(parts) > max_layers:
        raise ValueError(f"{what} may list at most {max_layers} layers, got {len(parts)}")
    sizes = []
    for p in parts:
        if isinstance(p, str):
            try:
                value = int(p.strip())
            except ValueError:
                value = None
        elif is_int(p):
            value = int(p)
        elif isinstance(p, Real) and not isinstance(p, bool) and math.isfinite(p) and float(p).is_integer():
            value = int(p)
        else:
            value = None
        where = f" in {' '.join(str(q) for q in parts)}" if len(parts) > 1 else ""
        if value is None:
            raise ValueError(f"{what} must be positive integers, got {p!r}{where}")
        if value < 1:
            raise ValueError(f"{what} must be positive integers, got {value}{where}")
        if value > max_size:
            raise ValueError(f"{what} must be at most {max_size} (a larger layer runs the server out of memory), "
                             f"got {value}")
        sizes.append(value)
    return tuple(sizes)


def check_activation(activation, *, what="activation"):
    """Return ``activation`` if Keras knows it by that name, else raise ValueError naming ``what``."""
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"{what} must be one of {list(ACTIVATIONS)}, got {activation!r}")
    return activation
