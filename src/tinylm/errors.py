"""The one exception type that means "the user asked for something we can't do"."""


class UserError(Exception):
    """A mistake in the command line, the data or a run directory.

    The CLI prints the message as one sentence and exits with code 2; nothing saved is touched.
    """
