"""The app floor: the web site's apps, its server and the job client (see ``shared/STYLE.md``).

One module per app (:mod:`~signatures.app.gallery`, :mod:`~signatures.app.builder`,
:mod:`~signatures.app.layers`), the experiment view they share (:mod:`~signatures.app.view`)
and their helpers (:mod:`~signatures.app.common`), the Voilà server
(:mod:`~signatures.app.server`) and the Dask job client (:mod:`~signatures.app.jobs`).

``build_builder()``, ``build_gallery()`` and ``build_layers()`` return app objects whose
``.widget`` a notebook displays; the notebooks in ``notebooks/`` are nothing more than that
wiring. Importing this package, and everything the Gallery and Layers pages do, needs no
TensorFlow and no umap: stored experiments are browsed from their arrays, and every figure a
view shows is built once and cached.
"""

import importlib

#: Name -> the module that defines it. Imported on first use, so that a Gallery kernel
#: never loads the Builder's job client (Dask) and a Builder kernel never loads the views.
_HOME = {
    "store_root": "common",
    "ExperimentView": "view",
    "GalleryApp": "gallery",
    "build_gallery": "gallery",
    "BuilderApp": "builder",
    "build_builder": "builder",
    "LayersApp": "layers",
    "build_layers": "layers",
}

__all__ = [
    "store_root",
    "ExperimentView",
    "GalleryApp",
    "BuilderApp",
    "LayersApp",
    "build_gallery",
    "build_builder",
    "build_layers",
    "build_app",
]


def __getattr__(name):
    if name in _HOME:
        value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_HOME))


def build_app(kind, **kwargs):
    """``build_app("builder")``, ``build_app("gallery")`` or ``build_app("layers")``."""
    apps = ("builder", "gallery", "layers")
    if kind not in apps:
        raise ValueError(f"app must be one of {sorted(apps)}, got {kind!r}")
    return __getattr__(f"build_{kind}")(**kwargs)
