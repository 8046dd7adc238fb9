"""A strict parser of the Prometheus text format, enough to check what /metrics renders."""

from __future__ import annotations

import re

_SAMPLE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r'(?:\{(?P<labels>(?:[^"}]|"(?:[^"\\]|\\.)*")*)\})?'
    r" (?P<value>[-+]?(?:[0-9.]+(?:e[-+]?[0-9]+)?|Inf|NaN))$"
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}

Sample = tuple[str, frozenset[tuple[str, str]]]


def parse_metrics(text: str) -> dict[Sample, float]:
    """Parse exposition text into {(name, labels): value}; raise ValueError on any bad line."""
    samples: dict[Sample, float] = {}
    typed: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            if kind not in _TYPES or name in typed:
                raise ValueError(f"line {number}: bad or repeated TYPE: {line}")
            typed.add(name)
            continue
        match = _SAMPLE.match(line)
        if match is None:
            raise ValueError(f"line {number}: not a sample: {line!r}")
        raw = match.group("labels") or ""
        labels = frozenset(_LABEL.findall(raw))
        if raw and ",".join(f'{k}="{v}"' for k, v in _LABEL.findall(raw)) != raw:
            raise ValueError(f"line {number}: malformed labels: {raw!r}")
        family = re.sub(r"_(bucket|sum|count|total)$", "", match.group("name"))
        if match.group("name") not in typed and family not in typed:
            raise ValueError(f"line {number}: sample before its TYPE line: {line!r}")
        key = (match.group("name"), labels)
        if key in samples:
            raise ValueError(f"line {number}: duplicate sample {key}")
        samples[key] = float(match.group("value"))
    return samples


def value(samples: dict[Sample, float], name: str, **labels: str) -> float:
    """The value of one sample (0 when absent, as Prometheus treats a missing counter)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
