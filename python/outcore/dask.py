"""outcore with dask: computing dask arrays into BigArrays (``store``) inside one transaction.

Needs the ``dask`` extra (``pip install outcore[dask]``); nothing here is imported by
``import outcore``.
"""

from ._dask_store import store

__all__ = ["store"]
