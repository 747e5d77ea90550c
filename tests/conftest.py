"""Options shared by every test: which site config the tests deploy and check."""

from pathlib import Path


def pytest_addoption(parser):
    parser.addoption("--site", default="site.yml", type=Path,
                     help="site config of the local host the integration tests use")
