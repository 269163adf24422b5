"""The simulator package's exceptions: one root, a subclass per concern."""


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
