"""Bad dataset input: one error type that names the file/record and the problem, and a skip report.

Every loader and the image reader raise :class:`DatasetIssue`. With ``DATASETS.SKIP_INVALID``
(``skip_invalid=True``) the caller passes the issue to :meth:`SkipReport.handle` instead, which
counts it by reason and lets loading go on without that record; at the end
:meth:`SkipReport.log_summary` logs one line per reason. With ``skip_invalid=False`` ``handle``
re-raises, so the first bad record stops the run with a message that says where and what.

:class:`DatasetIssue` pickles with all its fields, so it crosses process boundaries (cache encoder
processes, DataLoader workers) intact. :func:`collect_skips` gathers the counts of every
:class:`SkipReport` made while it is active (e.g. inside the dataset loaders) into one report, so a
tool can log one summary at the end.
"""

from __future__ import annotations

import logging
from collections import Counter
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Dict, Iterator, Optional, Tuple

__all__ = ["DatasetIssue", "SkipReport", "Reason", "collect_skips"]

logger = logging.getLogger(__name__)


class Reason:
    """Short keys of the kinds of bad input; they are the buckets of a :class:`SkipReport`."""

    MISSING_FILE = "missing file"
    CORRUPT_IMAGE = "corrupt or truncated image"
    IMAGE_SIZE_MISMATCH = "image size differs from the annotation"
    BAD_RECORD = "malformed record"
    DUPLICATE_IMAGE = "duplicate image id"
    INVALID_RLE = "invalid RLE"
    INVALID_POLYGON = "invalid polygon"
    BOX_OUTSIDE_IMAGE = "box outside the image or empty"
    UNKNOWN_CATEGORY = "unknown category id"
    UNKNOWN_ATTRIBUTE = "unknown attribute id"
    UNKNOWN_IMAGE = "annotation for an unknown image"
    EMPTY_DATASET = "empty dataset"
    # Not an error: a pre-release attribute (e.g. the sample's textile "gauze") that the final
    # taxonomy dropped; it is removed from the instance and counted so the user sees it.
    ATTRIBUTE_NOT_IN_FINAL = "attribute not in the final taxonomy (dropped)"


class DatasetIssue(ValueError):
    """A record of a dataset that cannot be used.

    Args:
        source: the file (JSON, CSV or image path) the record comes from.
        problem: what is wrong, in words.
        record: which record (e.g. ``"annotation id 17 (image 9813)"``); empty for a whole file.
        reason: one of the :class:`Reason` keys, used to count skipped records.
    """

    def __init__(
        self, source: str, problem: str, record: str = "", reason: str = Reason.BAD_RECORD
    ) -> None:
        self.source = str(source)
        self.problem = problem
        self.record = record
        self.reason = reason
        where = f"{self.source}: {record}" if record else self.source
        super().__init__(f"{where}: {problem}")

    def __reduce__(self) -> Tuple[Any, ...]:
        # BaseException pickles as ``cls(*self.args)``, and ``args`` is the one message string,
        # which this constructor cannot take: rebuild from the fields (plus any added state).
        return (type(self), (self.source, self.problem, self.record, self.reason), self.__dict__)


# The report that collect_skips() is gathering into, if any.
_COLLECTOR: ContextVar[Optional["SkipReport"]] = ContextVar("skip_collector", default=None)


@contextmanager
def collect_skips(report: "SkipReport") -> Iterator["SkipReport"]:
    """Within the block, every other :class:`SkipReport` forwards what it counts to ``report``.

    The forwarding reports still count for themselves, but leave the logging to ``report``: each
    item is logged once (by ``report``, under its ``max_logged``) and their own summaries go to
    DEBUG, so the caller logs a single summary at the end with ``report.log_summary()``.
    """
    token = _COLLECTOR.set(report)
    try:
        yield report
    finally:
        _COLLECTOR.reset(token)


class SkipReport:
    """Counts records skipped for bad input, by reason, and logs a summary.

    Args:
        name: what is being read (dataset name or file), used in the summary line.
        max_logged: how many individual issues are logged at WARNING before going quiet
            (``None``: all of them).
    """

    def __init__(self, name: str, max_logged: Optional[int] = 10) -> None:
        self.name = name
        self.max_logged = max_logged
        self.counts: Counter = Counter()
        self.first_example: Dict[str, str] = {}

    def handle(self, issue: DatasetIssue, skip_invalid: bool) -> None:
        """Raise ``issue`` unless ``skip_invalid``; otherwise count it (the caller then skips)."""
        if not skip_invalid:
            raise issue
        self.add(issue.reason, str(issue))

    def add(self, reason: str, message: str) -> None:
        """Count one skipped/dropped item under ``reason``."""
        self.counts[reason] += 1
        self.first_example.setdefault(reason, message)
        collector = _COLLECTOR.get()
        if collector is not None and collector is not self:
            collector.add(reason, message)
        elif self.max_logged is None or self.total <= self.max_logged:
            logger.warning("%s: %s", reason, message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def count(self, reason: str) -> int:
        return self.counts.get(reason, 0)

    def summary(self) -> str:
        """One line per reason with its count and first example, or a line saying nothing was."""
        if not self.counts:
            return f"{self.name}: nothing skipped"
        lines = [f"{self.name}: skipped {self.total} item(s):"]
        for reason, n in self.counts.most_common():
            lines.append(f"  {n:6d} x {reason} (first: {self.first_example[reason]})")
        return "\n".join(lines)

    def log_summary(self, log: Optional[logging.Logger] = None) -> None:
        collector = _COLLECTOR.get()
        if collector is not None and collector is not self:
            level = logging.DEBUG  # counted in the collector, which logs the one summary
        else:
            level = logging.WARNING if self.counts else logging.INFO
        (log or logger).log(level, self.summary())

    def merge(self, other: "SkipReport") -> None:
        """Add another report's counts (e.g. from a DataLoader worker)."""
        self.counts.update(other.counts)
        for k, v in other.first_example.items():
            self.first_example.setdefault(k, v)
