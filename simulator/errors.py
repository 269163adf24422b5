"""The simulator package's exceptions: one root, a subclass per concern."""


def first_line(e: BaseException, default: str | None = None) -> str:
    """The first non-blank line of an exception's message (a library's multi-line error
    becomes one line of ours); ``default`` (else the exception's type name) if it has none."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else (default or type(e).__name__)


class XbarsimError(Exception):
    """Root of every error xbarsim raises for a user mistake or an impossible request."""


class ConfigError(XbarsimError, ValueError):
    """A machine configuration value is missing, malformed or out of range."""


class ProgramError(XbarsimError, ValueError):
    """A program is malformed: it references a core, MVMU or address that does not exist."""


class SimulationError(XbarsimError, RuntimeError):
    """The simulation could not complete (deadlock, runaway program, bad inputs)."""


class DeadlockError(SimulationError):
    """Every unfinished core waits on something nothing will ever provide."""

    def __init__(self, message: str, stuck: list[dict]):
        super().__init__(message)
        self.stuck = stuck
