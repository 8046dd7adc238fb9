"""The options of `mta eval` and `mta eval-report`: names and help, written once.

The defaults stay in the command signatures (`mta.evaluation.options.DEFAULTS`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mta.cli.options import fits_int64

TaskOpt = Annotated[str, typer.Option("--task", help="LaMP task, e.g. movie_tagging.")]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="Per-user JSON, the users to split, or the pool with --test-data "
        "(default: <task>/users.json under $MTA_LAMP_DIR, then ./lamp, then ../shared/lamp).",
    ),
]
TestDataOpt = Annotated[
    Path | None,
    typer.Option(
        "--test-data",
        help="Per-user JSON whose every user is a test user; --data is then the pool, "
        "unsplit (--test-fraction unused). Refused when a real user is in both files.",
    ),
]
MethodsOpt = Annotated[
    str,
    typer.Option(
        "--methods",
        help="Comma-separated method names (the default lists every method but the stack "
        "ablations mta-int8, mta-nf4, mta-attention, mta-export, mta-export-r16).",
    ),
]
AnchorsOpt = Annotated[
    int, typer.Option("--anchors", callback=fits_int64, help="Anchors in the bank.")
]
TopKOpt = Annotated[
    int, typer.Option("--top-k", callback=fits_int64, help="Anchors fused per user.")
]
ShotsOpt = Annotated[
    int, typer.Option("--shots", callback=fits_int64, help="Profile items each user trains on.")
]
StackRankOpt = Annotated[
    int, typer.Option("--stack-rank", callback=fits_int64, help="Rank of the MTA stack.")
]
StackDtypeOpt = Annotated[
    str,
    typer.Option(
        "--stack-dtype", help="Storage format of the MTA stack: fp16, bf16, fp32, int8 or nf4."
    ),
]
StackModulesOpt = Annotated[
    str,
    typer.Option(
        "--stack-modules",
        help="Modules the MTA stack trains: all, attention, mlp, or a comma-separated list.",
    ),
]
FusionOpt = Annotated[
    str, typer.Option("--fusion", help="Fusion of the `mta` methods: cat, svd, factorwise.")
]
SeedOpt = Annotated[
    int, typer.Option("--seed", min=0, callback=fits_int64, help="First split/training seed.")
]
SeedsOpt = Annotated[
    int,
    typer.Option(
        "--seeds", callback=fits_int64, help="Seeds to run (seed, seed+1, ...); items are pooled."
    ),
]
LimitOpt = Annotated[
    int | None,
    typer.Option("--limit", callback=fits_int64, help="Cap on test users (entries) per seed."),
]
TestFractionOpt = Annotated[
    float, typer.Option("--test-fraction", help="Share of real users held out for testing.")
]
EpochsOpt = Annotated[
    int,
    typer.Option(
        "--epochs", callback=fits_int64, help="Epochs of the anchor LoRAs and the task LoRA."
    ),
]
LrOpt = Annotated[float, typer.Option("--lr", help="LR of the anchor LoRAs and task LoRA.")]
UserEpochsOpt = Annotated[
    int,
    typer.Option(
        "--user-epochs", callback=fits_int64, help="Epochs of per-user training (stack, OPPU)."
    ),
]
UserLrOpt = Annotated[
    float, typer.Option("--user-lr", help="LR of per-user training (stack, OPPU).")
]
MaxStepsOpt = Annotated[
    int | None,
    typer.Option(
        "--max-steps", callback=fits_int64, help="Cap on optimizer steps of every training."
    ),
]
MinHistoryOpt = Annotated[
    int,
    typer.Option(
        "--min-history", callback=fits_int64, help="Fewest profile items an anchor needs."
    ),
]
AnchorDataOpt = Annotated[
    str, typer.Option("--anchor-data", help="Anchor training data: user (paper) or cluster.")
]
MaxNewTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--max-new-tokens",
        callback=fits_int64,
        help="Generation budget (default 8 labels, 24 text).",
    ),
]
BatchSizeOpt = Annotated[
    int, typer.Option("--batch-size", callback=fits_int64, help="Generation batch size.")
]
ResamplesOpt = Annotated[
    int, typer.Option("--resamples", callback=fits_int64, help="Bootstrap resamples.")
]
ItemBootstrapOpt = Annotated[
    bool,
    typer.Option(
        "--item-bootstrap",
        help="Resample items instead of real users (narrower: ignores that a real "
        "user's entries share items).",
    ),
]
ClusterBootstrapOpt = Annotated[
    bool,
    typer.Option("--cluster-bootstrap", hidden=True, help="Resample real users (now the default)."),
]
DecodeOpt = Annotated[
    str,
    typer.Option(
        "--decode",
        help="generate: parse a greedy generation (the paper); rank: answer the label "
        "with the highest length-normalized log-likelihood (classification tasks).",
    ),
]
EvalJsonOutOpt = Annotated[
    Path | None, typer.Option("--json-out", help="Write the full result JSON here.")
]
ReportJsonOutOpt = Annotated[
    Path | None, typer.Option("--json-out", help="Write the pooled result JSON here.")
]
PlotOpt = Annotated[Path | None, typer.Option("--plot", help="Write a PNG chart here.")]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint", help="Rewrite this JSON after every finished method (partial results)."
    ),
]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Reuse the methods --checkpoint finished (same task, seed, items and options).",
    ),
]
WorkdirOpt = Annotated[
    Path | None,
    typer.Option("--workdir", help="Keep the private registry (bank, eval run) here."),
]
ResultFilesArg = Annotated[
    list[Path],
    typer.Argument(
        help="Result files of `mta eval --json-out` (or --checkpoint files) of one task; "
        "their seeds are pooled.",
        show_default=False,
    ),
]
