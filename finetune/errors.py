"""Errors raised on bad input. Each names the field or file and what was expected."""


class TunelabError(ValueError):
    """Base class: bad input that the user can fix."""


class ConfigError(TunelabError):
    """A config key is unknown, has the wrong type, or an impossible value."""


class DataError(TunelabError):
    """A data file or column is missing, empty or inconsistent."""


class ModelError(TunelabError):
    """A model source cannot be resolved or loaded."""


class TrainingError(RuntimeError):
    """Training diverged (NaN/inf loss) or failed in a way a trial should record."""
