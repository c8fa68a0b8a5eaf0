"""The wire protocol, as the SDK uses it: messages, encodings, error and close codes.

In this repository it is the top-level ``protocol`` package, shared with the gateway. The
SDK's own distribution (``packaging/notecard-sdk``) carries that package's code in this
place instead, as the ``notecard_sdk.protocol`` package, so that a client application gets
no top-level ``protocol`` from us (its own ``protocol.py`` keeps working). Import wire
types from here: ``from notecard_sdk.protocol import ErrorCode``.
"""

from protocol import *  # noqa: F403  (the same names, from the one definition)
from protocol import __all__  # noqa: F401  (the same list of names)
