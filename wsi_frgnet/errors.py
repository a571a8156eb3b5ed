"""The one exception type that means "the user gave us something we cannot use"."""


class InputError(Exception):
    """Bad user input: a missing or unreadable file, a wrong option, a mismatched label.

    The message is one line that names the file (or option) and the problem; the command
    line prints it as-is and exits non-zero, without a traceback.
    """
