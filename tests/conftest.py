"""Suite-wide options. Kernel and Envoy tests run everywhere (CI runs as root); long campaigns are
behind --runslow."""
import pytest


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run long fuzz campaigns")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="long campaign: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
