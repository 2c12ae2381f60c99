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

from .builder import BuilderApp, build_builder
from .common import store_root
from .gallery import GalleryApp, build_gallery
from .layers import LayersApp, build_layers
from .view import ExperimentView

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


def build_app(kind, **kwargs):
    """``build_app("builder")``, ``build_app("gallery")`` or ``build_app("layers")``."""
    apps = {"builder": build_builder, "gallery": build_gallery, "layers": build_layers}
    if kind not in apps:
        raise ValueError(f"app must be one of {sorted(apps)}, got {kind!r}")
    return apps[kind](**kwargs)
