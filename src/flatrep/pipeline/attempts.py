"""A job that failed for a reason that will repeat is not run again by Snakemake's retries.

Training and measure rules have ``retries: 2`` so that a job killed for memory or time gets
more of both on its next attempt (``by_attempt`` in workflow/rules/common.smk). Snakemake cannot
tell such a failure from one that will repeat: a missing data file, a value that does not fit
the data, a corrupt or crafted checkpoint. The command line can: an error meant for the user
(``cli.main``: ``ConfigError``, ``DataError``, ``CheckpointError``, ...) is deterministic.

The rules pass Snakemake's attempt number (``flatrep --attempt {resources.attempt} ...``).
The first attempt of a job clears what an earlier invocation recorded (its cause may have been
fixed since: a data file placed, a checkpoint regenerated), and records a deterministic failure
under ``MARKERS``, keyed by the job's command line. A later attempt of the same command that
finds the record fails at once with the recorded message, redoing no work. Where
``.snakemake/`` is not shared between attempts (pods of a Kubernetes run), no record is found
and the retry simply runs again, as before.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

#: Where deterministic failures are recorded (relative to the job's working directory, the
#: Snakemake project's root).
MARKERS = Path(".snakemake") / "flatrep-deterministic-failures"


def _marker(argv: list[str]) -> Path:
    """The record of the command line ``argv`` (the attempt number excluded)."""
    digest = hashlib.sha256(json.dumps(argv).encode()).hexdigest()[:32]
    return MARKERS / digest


def recorded(argv: list[str], attempt: int) -> str | None:
    """The message of the deterministic failure recorded for ``argv`` by its first attempt,
    if this is a later one; the first attempt clears any record and gets None."""
    marker = _marker(argv)
    if attempt <= 1:
        marker.unlink(missing_ok=True)
        return None
    return marker.read_text() if marker.is_file() else None


def record(argv: list[str], message: str) -> None:
    """Record that ``argv`` failed deterministically with ``message``."""
    marker = _marker(argv)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(message)
