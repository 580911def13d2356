"""The exceptions that mean "the user asked for something we can't do"."""


class UserError(Exception):
    """A mistake in the command line, the data or a run directory.

    The CLI prints the message as one sentence and exits with code 2; nothing saved is touched.
    """


class SamplingError(UserError):
    """A sampling setting out of range; `field` is its API name (temperature, top_p, top_k,
    seed), so the command line can name its option and the server the request's field."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field} {reason}")
        self.field, self.reason = field, reason
