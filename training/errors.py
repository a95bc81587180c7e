"""The errors stage 1 raises on purpose beyond clda_deploy's (ConfigError, CheckpointError, DatasetError ...).

Each is a ``CldaError``, so ``python -m training`` prints it as one ``error: ...`` line; anything else
keeps its traceback. Each also derives from the built-in type it was before, so callers that catch that
(``ValueError`` ...) keep working.
"""

from __future__ import annotations

from clda_deploy.errors import CldaError


class UsageError(CldaError, ValueError):
    """A command's argument or input cannot be used (a malformed ``--model`` or ``--shard``, a runs folder
    holding runs of another teacher); the message says what to change."""


class MissingInputError(CldaError, FileNotFoundError):
    """A file a command was pointed at does not exist; the message names the argument and the path."""


class TrainingDivergedError(CldaError, FloatingPointError):
    """The loss became NaN or infinite; the message names the settings to change (the last checkpoint is
    intact), which is why it is reported as one line rather than as a traceback."""
