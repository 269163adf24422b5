"""Shared setup for the compiler tests: the ``slow`` marker (deselect with -m "not slow")."""


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that takes tens of seconds (ImageNet-"
                                       "scale graphs); deselect with -m 'not slow'")
