"""The one error every data function raises for unusable input."""


class DataError(ValueError):
    """Data that cannot be used. The message says what is wrong and, for a refusal, what to do.

    ``advice`` holds the what-to-do line separately where the message itself must stay a short
    reason (a file skipped in a report): a page that refuses that one file shows both. ``report``: the
    validation report of data refused as unusable (its classes, counts and skipped files), for a check to show."""

    def __init__(self, message: str, advice: str = "", report=None):
        super().__init__(message)
        self.advice, self.report = advice, report
