"""The `mta` command line."""
