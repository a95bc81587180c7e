"""The one base class of every error the project raises on purpose (DESIGN §11).

Command lines catch ``CldaError`` and print its message as one ``error: ...`` line, because such
an error names a file, key or value the user can fix. Anything else (a shape mismatch, CUDA out of
memory, a bug) is not caught, so it keeps its traceback. Each subclass also derives from the
built-in type it always was (``ValueError``, ``RuntimeError`` ...), so callers that catch those keep
working.
"""

from __future__ import annotations


class CldaError(Exception):
    """A problem the user can fix; the message names what is wrong (file, key, value)."""
