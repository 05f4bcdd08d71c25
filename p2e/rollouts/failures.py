"""`run.max_failures`: stop a rollout whose episodes keep failing (a dead model endpoint, a bad
key, a broken tool) instead of failing every one of them.

```yaml
run: {max_failures: 3}       # stop once more than 3 episodes of this run failed
run: {max_failures: 10%}     # or 0.1: once more than 10% of the finished ones did
```

A rate is checked once `MIN_FINISHED` episodes of this run have finished (all of them in a
smaller run), so one early failure does not stop a sweep. Only this run's rows count: a resume
runs the failed episodes again, so their earlier failures say nothing about it. Pure: the
coordinator feeds it rows.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from p2e.errors import LINE_MAX, P2EError
from p2e.rollouts.store import Row

MIN_FINISHED = 20
"""Finished episodes before a rate is checked: at 20, one or two unlucky failures at a 10% limit
do not stop a sweep, and a dead endpoint (every episode failing in seconds) still stops it
within the first few seconds."""
_PERCENT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*%\s*")
_HINT = "give a count of failed episodes (3), a rate below 1 (0.1) or a percent ('10%')"


def parse_limit(value: object) -> int | float | None:
    """`run.max_failures` as given in a spec -> a count (int >= 0), a rate in (0, 1), or None
    (no limit); a value that is neither raises ValueError with one line saying what to write."""
    if value is None:
        return None
    if isinstance(value, bool):  # (True is an int to Python; here it would mean nothing clear)
        raise ValueError(f"{value!r}: {_HINT}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value}: a count cannot be negative (0 stops at the first failure)")
        return value
    if isinstance(value, str):
        m = _PERCENT.fullmatch(value)
        if m is None:
            raise ValueError(f"{value!r} is not a percent; {_HINT}")
        if not 0 < float(m.group(1)) < 100:
            raise ValueError(f"{value!r}: a percent must be above 0% and below 100%, e.g. '10%'")
        return float(m.group(1)) / 100
    if isinstance(value, float):
        if not math.isfinite(value) or not 0 < value < 1:
            raise ValueError(
                f"{value!r}: a rate must be above 0 and below 1 (0.1); a count is a whole number (3)"
            )
        return value
    raise ValueError(f"{value!r}: {_HINT}")


def describe(limit: int | float) -> str:
    """A limit as a user would write it: `3`, `10%`."""
    return str(limit) if isinstance(limit, int) else f"{limit * 100:g}%"


class TooManyFailures(P2EError):
    """The rollout passed `run.max_failures` and stopped (exit code 3, so a script can tell it
    from a mistake in its input)."""

    exit_code = 3

    def __init__(self, reason: str, rollout: str = "", spec: str = ""):
        if rollout:
            message = (
                f"rollout {rollout} {reason}; fix the cause, then run the failed and the remaining "
                f"episodes: p2e rollout run {spec or 'SPEC'} --resume {rollout}"
            )
        else:
            message = reason
        super().__init__(message)
        self.reason, self.rollout = reason, rollout


class FailureLimit:
    """Counts the rows of one run of a rollout against `run.max_failures`."""

    def __init__(self, limit: int | float, planned: int):
        self.limit = limit
        self.min_finished = min(MIN_FINISHED, max(planned, 1))
        self.finished = self.failed = 0
        self.errors: Counter[str] = Counter()

    def add(self, row: Row) -> bool:
        """Count a finished episode; whether the rollout is now past its limit."""
        self.finished += 1
        if row.status == "failed":
            self.failed += 1
            self.errors[row.error or "no error recorded"] += 1
        return self.passed()

    def passed(self) -> bool:
        if isinstance(self.limit, int):
            return self.failed > self.limit
        return self.finished >= self.min_finished and self.failed / self.finished > self.limit

    def reason(self) -> str:
        """Why it stopped, on one line: the counts, the limit, the most common error."""
        limit = describe(self.limit)
        if isinstance(self.limit, float):
            limit += f" of at least {self.min_finished} finished"
        text = f"stopped after {self.failed} of {self.finished} finished episodes failed"
        text += f" (run.max_failures: {limit})"
        if self.errors:
            error, n = self.errors.most_common(1)[0]
            error = " ".join(error.split())
            error = error if len(error) <= LINE_MAX else error[: LINE_MAX - 1] + "…"
            text += f"; most common error ({n} of {self.failed}): {error}"
        return text
