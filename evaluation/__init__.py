"""`mta eval`, the LaMP evaluation application: a client of the registry service layer.

Beside `mta.cli` and `mta.server`; the method-free statistics are `mta.evaluation.statistics` and
`mta.evaluation.summary`. Modules, by job:

- ``options``: `EvalOptions`, every default once (the CLI reads `DEFAULTS`).
- ``data``: where the users files are (--data, $MTA_LAMP_DIR, ./lamp, ../shared/lamp)
  and the --test-data overlap check.
- ``protocol``: the split by real user and the scored items of each test entry.
- ``method``: the `EvalMethod` contract and `SeedRun`, what every method is given.
- ``methods``: the methods registered by name; ``methods_baseline``, ``methods_bank``
  hold their classes.
- ``predictor``: generation and baseline training on the shared base model.
- ``bank``: the seed's bank and evaluation users, through the registry services.
- ``runner``: `run_eval`, the result document and checkpoints.
- ``workspace``: the given or private registry a run writes to.
- ``report`` and ``plot``: tables and the PNG chart of a result.

Nothing is imported here, so `mta --help` only loads ``options``.
"""
