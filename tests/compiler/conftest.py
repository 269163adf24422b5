"""Shared setup for the compiler tests: the ``slow`` marker (deselect with -m "not slow"), and
a module's ``RNG`` reseeded per test so a test draws the same data alone, under ``-k`` or in
any order (import-time draws, e.g. parametrized weights, happen once, in file order)."""
import zlib

import numpy as np
import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that takes tens of seconds (ImageNet-"
                                       "scale graphs); deselect with -m 'not slow'")


@pytest.fixture(autouse=True)
def _rng_per_test(request):
    if isinstance(getattr(request.module, "RNG", None), np.random.Generator):
        # crc32, not hash(): str hashes change per process (PYTHONHASHSEED)
        request.module.RNG = np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
