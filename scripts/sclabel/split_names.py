"""Split names, read by the Snakefile (standard library only): the base splits (cv1..cvK, lodo_<group>, final) and
the label-fraction splits of a ``split.label_fractions`` sweep, ``<base>_f<fraction>_d<draw>`` (e.g. cv1_f0.05_d1:
base split cv1, 5% of its training cells labelled, first draw)."""

from __future__ import annotations

import re
from collections.abc import Container, Sequence

BASE_SPLIT = r"cv[0-9]+|lodo_[A-Za-z0-9_-]+"  # the splits whose test cells are scored (final has none)
SWEEP_SUFFIX = r"_f[0-9.]+_d[0-9]+"
SCORED_SPLIT = rf"({BASE_SPLIT})({SWEEP_SUFFIX})?"  # a base split or one of its label-fraction splits
_FRACTION_SPLIT = re.compile(r"^(?P<base>.+)_f(?P<fraction>[0-9.]+)_d(?P<draw>[0-9]+)$")
ALL_LABELS = 1.0  # the base split itself: every training cell labelled
# what the benchmark's tables are grouped by beside method and metric, where a table has the column: the split
# scheme (cv or lodo) and, in a split.label_fractions sweep, the share of training labels (label_fraction)
GROUPS = ("scheme", "label_fraction")


def fraction_split_name(base: str, fraction: float, draw: int) -> str:
    """The name of draw ``draw`` (from 1) of ``fraction`` of ``base``'s labels; ``base`` itself at fraction 1."""
    return base if fraction >= ALL_LABELS else f"{base}_f{fraction:g}_d{draw}"


def sweep_fractions(fractions: Sequence[float] | None) -> list[float]:
    """The sweep's fractions in increasing order, 1 (the base splits) always among them; [] without a sweep."""
    return sorted({*map(float, fractions), ALL_LABELS}) if fractions else []


def sweep_split_names(bases: Sequence[str], fractions: Sequence[float] | None, draws: int) -> list[str]:
    """Every scored split of a sweep: per base split, each fraction below 1 in ``draws`` draws, then the base split;
    the base splits alone without a sweep."""
    if not fractions:
        return list(bases)
    return [fraction_split_name(base, fraction, draw) for base in bases for fraction in sweep_fractions(fractions)
            for draw in (range(1, draws + 1) if fraction < ALL_LABELS else [1])]


def parse_split(name: str) -> tuple[str, float, int]:
    """(base split, label fraction, draw) of a split name; (name, 1.0, 1) for a base split."""
    match = _FRACTION_SPLIT.match(name)
    if match is None:
        return name, ALL_LABELS, 1
    return match["base"], float(match["fraction"]), int(match["draw"])


def base_split(name: str) -> str:
    """The base split of a label-fraction split (its test cells, its pretraining); a base split itself."""
    return parse_split(name)[0]


def label_fraction(name: str) -> float:
    """The share of its base split's training cells that a split labels (1.0 for a base split)."""
    return parse_split(name)[1]


def group_columns(table: Container[str]) -> list[str]:
    """The ``GROUPS`` columns ``table`` (a data frame) has, in that order."""
    return [column for column in GROUPS if column in table]
