"""The one exception type that means "the user's input is wrong"."""

from __future__ import annotations


class SqueezeError(Exception):
    """Bad input: a study file, a flag, a folder or a URL that breaks a rule.

    The message is one sentence that names the key or file, what was given and what is allowed.
    The command line prints it without a traceback and exits non-zero.
    """
