"""`mta eval`, the LaMP evaluation application: a client of the registry service layer.

Beside `mta.cli` and `mta.server`: it goes through the registry's service facade
(`mta.registry.service`) and uses the method core `mta`; neither imports it. Modules, by job:

- ``options``: `EvalOptions`, every default once (the CLI reads `DEFAULTS`).
- ``data``: where the users files are (--data, $MTA_LAMP_DIR, ./lamp, ../shared/lamp)
  and the --test-data overlap check.
- ``protocol``: the split by real user and the scored items of each test entry.
- ``seed_state``: `SeedState`, one seed's split, items and shared resources;
  ``seed_run``: `SeedRun`, that state plus the pool bank built on first use.
- ``method``: the `EvalMethod` contract (``predict(run: SeedRun)``).
- ``methods``: the methods registered by name; ``methods_baseline``, ``methods_bank``
  hold their classes.
- ``predictor``: generation and baseline training on the shared base model.
- ``bank``: the seed's bank and evaluation users, through the registry services.
- ``runner``: `run_eval`, the result document and checkpoints.
- ``results``: a result's statistics (`summarize_predictions`) and pooling saved results.
- ``statistics``, ``summary``, ``per_user``: the method-free statistics (bootstrap
  intervals and paired differences, per-subset summaries, per-user breakdowns).
- ``workspace``: the given or private registry a run writes to.
- ``report`` and ``plot``: tables and the PNG chart of a result.

Nothing is imported here, so `mta --help` only loads ``options``.
"""
