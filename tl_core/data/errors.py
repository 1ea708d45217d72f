"""The one error every data function raises for unusable input."""


class DataError(ValueError):
    """Data that cannot be used. The message says what is wrong and what to do."""
