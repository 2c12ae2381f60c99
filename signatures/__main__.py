"""``python -m signatures``: see :mod:`signatures.cli`."""

from .cli import entry

if __name__ == "__main__":  # not when a side process (spawned) imports this module as its main
    entry()
