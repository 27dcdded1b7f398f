"""Error types that mmq-eval raises for bad user input."""


class MMQConfigError(ValueError):
    """A user-supplied setting (model arg, quantization spec, sweep spec, path) is invalid.

    The message always names the offending setting and how to fix it.
    """


class MMQDataError(FileNotFoundError):
    """A data file or image that a task or calibration needs is missing or unreadable."""
