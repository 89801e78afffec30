"""The project's deliberate errors: each message names the file, key or row at fault and what would be right.

Entry points print such an error as one line and exit with status 2 (set KDISTILL_DEBUG=1 for the traceback);
any other exception is a bug and keeps its traceback.
"""


class KdistillError(Exception):
    pass


class DataError(KdistillError, ValueError):
    """Bad task data: the message names the file and the line (or row)."""
