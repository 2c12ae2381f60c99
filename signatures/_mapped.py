"""Memory-mapped activations: keep what a pass over them has read out of the process's memory."""

from __future__ import annotations

import mmap

__all__ = ["drop_pages"]


def drop_pages(values):
    """Let the kernel take back the pages of a memory-mapped array that a pass has touched.

    Reading (or writing) a memory-mapped ``.npy`` maps its pages into the process: they count in
    its resident memory until it ends, although they are only file cache. ``MADV_DONTNEED`` drops
    them from this process's mappings; the data stay in the file and the page cache, and the next
    read maps them again. Anything that is not a memory-mapped array is left alone.
    """
    handle = getattr(values, "_mmap", None)
    if isinstance(handle, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        try:
            values.flush()
            handle.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # a closed map, or a platform without madvise
            pass
