"""skysieve: classify every source in a survey data release, overnight, on Dask.

The pipeline package holds the job: CLI, configuration, ingest, preprocessing,
the classification graph, the catalogue, training and the synthetic survey.
It may import :mod:`workers` and :mod:`cluster`; they never import it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("skysieve")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
