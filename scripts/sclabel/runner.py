"""Run one workflow step from a Snakemake ``script:``: logging to the rule's log and one-line errors.

Snakemake itself sets OMP/MKL/OPENBLAS thread variables to the rule's ``threads``."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from sclabel.errors import InputError
from sclabel.io import remove_stale_temps

log = logging.getLogger("sclabel")


def configure_logging(log_file: str | None) -> None:
    """Send sclabel's log records to the rule's log file and to stderr."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
        handlers.append(logging.FileHandler(log_file, mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=handlers, force=True)
    logging.captureWarnings(True)


def run_step(snakemake: Any, step: Callable[[Any], None]) -> None:
    """Call ``step(snakemake)``; bad input ends the job with one line naming file, field and fix.

    First removes the temporary files a killed earlier run of this job left beside its outputs.
    """
    configure_logging(snakemake.log[0] if len(snakemake.log) else None)
    for path in remove_stale_temps(snakemake.output):
        log.warning("removed %s, left behind by a killed earlier run", path)
    try:
        step(snakemake)
    except InputError as err:
        log.error("%s", err)
        sys.exit(1)
    except Exception:
        log.exception("rule %s failed", snakemake.rule)
        raise
