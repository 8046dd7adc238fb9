"""Root pytest configuration: shared fixtures live in tests/fixtures_*.py, one file per owner."""

pytest_plugins = ["tests.fixtures_model", "tests.fixtures_services"]
