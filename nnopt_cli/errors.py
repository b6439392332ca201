"""User-facing errors: one clear line, a non-zero exit, no traceback unless asked for."""

from __future__ import annotations

import os
import sys


class NnoptError(Exception):
    """An error whose message is meant for the user as it is (one line)."""

    exit_code = 2


class ConfigError(NnoptError):
    """A config value is invalid: says which key, the value given and what is allowed."""

    def __init__(self, key: str, value: object, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"invalid config: {key}={value!r}: {allowed}")


class DataError(NnoptError):
    """A dataset file is missing, truncated or corrupt."""


def want_traceback() -> bool:
    """Users ask for full tracebacks the Hydra way (HYDRA_FULL_ERROR=1) or with NNOPT_DEBUG=1."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("NNOPT_DEBUG") == "1"


def fail(message: str, code: int = 2) -> None:
    """Print one line to stderr and exit."""
    print(f"nnopt: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def report_errors(command: str, fn, *args):
    """Run `fn(*args)` for `nnopt <command>`: an NnoptError becomes one line and its exit code
    (a traceback only when asked for), a closed pipe (`| head`) a quiet exit, an OSError (a full
    disk, an unwritable file) one line and exit status 1."""
    try:
        result = fn(*args)
        sys.stdout.flush()  # a failed write of what is still buffered is reported here, not at exit
        return result
    except NnoptError as e:
        if want_traceback():
            raise
        print(f"nnopt {command}: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except BrokenPipeError:
        sys.stderr.close()
        raise SystemExit(0) from None
    except OSError as e:  # a full disk or an unwritable file: one line, not a traceback
        if want_traceback():
            raise
        quiet_stdout()
        what = f"{e.filename}" if e.filename else "cannot write the output"
        print(f"nnopt {command}: error: {what}: {e.strerror or e}", file=sys.stderr)
        raise SystemExit(1) from None


def quiet_stdout() -> None:
    """Send what is left in stdout's buffer to /dev/null, so that the exit does not try (and fail)
    to write it again after an error was reported."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout closed or not a real file (a test's capture)
        pass
