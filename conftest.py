"""Root pytest configuration: shared fixtures live in tests/fixtures_*.py, one file per owner.

tests/support.py holds the helpers the test folders share (and the `mta` CLI runner fixture).
"""

pytest_plugins = ["tests.fixtures_model", "tests.fixtures_services", "tests.support"]
