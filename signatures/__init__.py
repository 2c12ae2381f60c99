"""signatures: follow every input through a classifier's hidden layers.

Extract each hidden layer's activations, cluster them (k-means, K by silhouette), and give
every input its cluster path; then look at the paths of digits the network never saw.

Importing the package imports no TensorFlow: names from ``models`` and ``activations``
are loaded on first use.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "load_dataset": "data",
    "prepare": "data",
    "one_hot": "data",
    "DataUnavailableError": "data",
    "build_mlp": "models",
    "build_cnn": "models",
    "train": "models",
    "evaluate": "models",
    "save_model": "models",
    "load_model": "models",
    "extract": "activations",
    "default_hidden_layers": "activations",
    "select_k": "clustering",
    "LayerKMeans": "clustering",
    "cluster_layers": "clustering",
    "paths_from_labels": "paths",
    "assign_paths": "paths",
    "path_counts": "paths",
    "flows": "paths",
    "project_layers": "projection",
    "ExperimentConfig": "experiment",
    "Experiment": "experiment",
    "run_experiment": "experiment",
    "save_experiment": "store",
    "load_experiment": "store",
    "list_experiments": "store",
    "write_report": "report",
    "render_report": "report",
    "analyze": "analysis",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'signatures' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
