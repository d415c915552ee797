"""The one exception type the CLI turns into a one-line error and exit code 2."""


class DsmError(Exception):
    """A user-facing error: bad input, bad parameter, missing file.

    The message must name the file, key or value and say what is wrong, in one line.
    """
