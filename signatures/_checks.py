"""Checks of user choices shared by the config and the model builders (no TensorFlow)."""

from __future__ import annotations

ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu", "selu", "gelu", "swish", "linear")


def parse_hidden(hidden):
    """Validate hidden layer sizes.

    Parameters
    ----------
    hidden : sequence of int or str
        For example ``(64, 32)`` or ``"64 32"`` / ``"64,32"``.

    Returns
    -------
    tuple of int
    """
    if isinstance(hidden, str):
        parts = [p for p in hidden.replace(",", " ").split() if p]
    else:
        parts = list(hidden)
    if not parts:
        raise ValueError("hidden sizes must list at least one layer size, e.g. 64 32; got none")
    sizes = []
    for p in parts:
        try:
            value = int(p)
            if isinstance(p, float) and value != p:
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"hidden sizes must be positive integers, got {p!r} in {hidden!r}") from None
        if value < 1:
            raise ValueError(f"hidden sizes must be positive integers, got {value} in {hidden!r}")
        sizes.append(value)
    return tuple(sizes)


def check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
    return activation
