"""Exception hierarchy: every error a user can cause derives from :class:`OptsarError`.

Each message names the offending input and says how to fix it.
"""

from __future__ import annotations


class OptsarError(Exception):
    """Base class of all errors raised by optsar_nb on bad input or state."""


class InvalidParameter(OptsarError, ValueError):
    """A parameter value is out of range or inconsistent (e.g. end date before start)."""


class UnknownMission(InvalidParameter):
    """The mission name is not in the mission catalogue."""


class InvalidAOI(OptsarError, ValueError):
    """The area of interest is empty, invalid, self-intersecting or out of range."""


class AOITooLarge(InvalidAOI):
    """The area of interest exceeds the configured limit; it must be tiled."""


class StackMismatch(OptsarError, ValueError):
    """An image stack and its metadata table disagree (band count, IDs, grid)."""


class NoImages(OptsarError):
    """No image of the mission falls within the AOI and dates."""


class NotEnoughPairs(OptsarError):
    """Fewer optical-SAR pairs than the regression needs."""


class OutputExists(OptsarError, FileExistsError):
    """An output file exists and overwriting was not requested."""


class WorkerFailed(OptsarError, RuntimeError):
    """A worker process of the local engine stopped abruptly (unguarded script, out of memory)."""


class InsufficientDisk(OptsarError, OSError):
    """The temporary folder of a local job cannot hold its staged stacks."""


class WriteFailed(OptsarError, OSError):
    """An output could not be written completely (full disk, read-only folder); nothing was replaced."""


class OutputLocked(OptsarError):
    """Another run is writing into the same output folder."""


class UnreadableInput(OptsarError, ValueError):
    """An input file is damaged, empty, truncated or of another format."""
