"""Helpers shared by the benchmark scripts (run as ``python bench/<script>.py``)."""


def verdict(ok):
    return "PASS" if ok else "MISS"


def table(title, header, rows):
    """Print a plain text table; ``rows`` are lists of already formatted cells."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}\n{line}")
    print("  ".join(str(c).ljust(w) for c, w in zip(header, widths)))
    print(line)
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    print(line, flush=True)
