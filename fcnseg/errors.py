"""The errors a user can cause, and how the CLI reports them.

Every exception here is a mistake in the user's input (a config key, a file, a value) whose message is
one line that names the culprit and says how to fix it. The CLI prints it without a traceback and exits
with `exit_code` (2). Anything else escaping a command is an internal failure (exit 1).
"""


class FcnsegError(Exception):
    """A user-facing error: one line naming the file/key/value and the fix; exit code 2."""

    exit_code = 2


class ConfigError(FcnsegError):
    """The YAML config or a --set override is invalid."""


class DataError(FcnsegError):
    """Images, masks or a dataset folder are unusable as given."""


class WeightsError(FcnsegError):
    """A caffemodel cannot be read, converted or transplanted into the net."""


class RunError(FcnsegError):
    """A run folder is missing, incomplete or does not match the request."""


class CaffeUnavailableError(FcnsegError):
    """pycaffe cannot be imported, or lacks what was asked of it (e.g. GPU mode on a CPU-only build)."""
