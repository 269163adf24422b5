"""The one exception family of the ``models`` package.

``ModelError`` is the root; ``DataError`` narrows it to data-set problems. Both derive
from ``ValueError`` so callers that already catch bad-argument errors keep working.
Messages are one line and carry the offending value.
"""

#: What a command that trains or exports says where torch is not installed.
NO_TORCH = "this command needs torch: pip install 'xbarsim[torch]'"


class ModelError(ValueError):
    """A user-visible problem with a model name, option, checkpoint or export."""


class DataError(ModelError):
    """A data set that cannot be read: missing, truncated, wrong format or inconsistent."""
