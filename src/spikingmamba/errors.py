"""Errors meant for the user: the CLI prints their message and exits non-zero, no traceback."""


class UserError(Exception):
    """Bad input named in plain words (a path, a config field, a value)."""


class CheckpointError(UserError):
    """A folder that is not a loadable Mamba / SpikingMamba checkpoint, or whose shapes disagree."""


class InputError(UserError, ValueError):
    """A tensor or value passed to the model that it cannot take (dtype, range, shape)."""


class ConfigError(UserError, ValueError):
    """A configuration value that is out of range or of the wrong type; names the field."""


class FileError(UserError):
    """A file that cannot be read or written (missing, unreadable, damaged, disk full); names it."""
