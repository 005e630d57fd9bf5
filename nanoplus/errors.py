"""The one base class for errors meant for the user (printed as a message, never a traceback)."""


class NanoplusError(Exception):
    """A problem with the user's input: the message names the file, the field and the fix."""
