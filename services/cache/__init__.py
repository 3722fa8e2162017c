"""The cache service: answers workers' cache-sync RPCs from the federation store.

:mod:`services.cache.service` holds :class:`~services.cache.service.CacheService`;
:mod:`services.cache.__main__` is the ``scarlet-cache`` process.
"""
