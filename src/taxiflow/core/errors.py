"""Errors a user can act on. Each message names the file or argument and what was expected."""


class TaxiflowError(Exception):
    """Base class: the CLI prints the message and exits non-zero, without a traceback."""


class InvalidArgumentError(TaxiflowError):
    """A user-supplied argument (month, feature list, parameter) is malformed or inconsistent."""


class MonthNotAvailableError(TaxiflowError):
    """The month's file is neither in the data directory nor published at the source."""


class DownloadError(TaxiflowError):
    """A transient network failure (timeout, reset, 5xx, truncated body): worth retrying."""


class DataFileError(TaxiflowError):
    """A data file is unusable as a whole: not parquet, missing columns, unconvertible types."""


class NoUsableRowsError(DataFileError):
    """A file had no rows left after preparation's filters."""
