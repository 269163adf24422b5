"""The compressor's one root exception."""


class CompressionError(ValueError):
    """A compression request is impossible or malformed (bad recipe, geometry, layer name...).

    Raised for anything a user can trigger; the message names the offending field and value
    and, where there is one, the allowed range.
    """
