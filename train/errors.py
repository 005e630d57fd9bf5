"""The error a training set-up raises when the trainer refuses it."""
from nanoplus.errors import NanoplusError


class TrainError(NanoplusError):
    """A training set-up the trainer refuses; the message says which field or option to change."""
