"""Exceptions that name the file or field at fault and say what to do."""


class VisaeError(Exception):
    """Base class for every error visae raises on bad input."""


class ConfigError(VisaeError):
    """A configuration file or override is invalid (unknown key, wrong type, missing path)."""


class ConfigValueError(ConfigError, ValueError):
    """A config model built directly (``TrainConfig(lr=-1)``) got a bad field; a ValueError too, like the
    pydantic error it replaces."""


class DataError(VisaeError):
    """An image or dataset file cannot be read."""


class CacheError(VisaeError):
    """An activation cache is missing, corrupt, or from an incompatible schema."""


class CheckpointError(VisaeError):
    """An SAE checkpoint is unreadable, unsafe, or of the wrong shape or family."""


class StudyError(VisaeError):
    """A study folder is locked, inconsistent, or a job failed."""


class DiskFullError(VisaeError, OSError):
    """The disk filled up while writing a file; the partial file was discarded, complete files are kept."""


class OutputConflictError(ConfigError):
    """An output folder holds results of other inputs or settings; replacing them needs ``--force``."""


class VisaeWarning(UserWarning):
    """Something is probably wrong but visae can go on (e.g. an SAE evaluated on another backbone's cache)."""
