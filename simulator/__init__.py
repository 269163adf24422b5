"""xbarsim's machine: configuration, ISA, programs, and the cycle-level simulator."""
from .config import MachineConfig, load_config, preset_names, with_overrides
from .errors import (ConfigError, DeadlockError, ProgramError, SimulationError, XbarsimError)
from .program import Program, TensorPort
from .report import Report
from .simulate import simulate

__all__ = ["MachineConfig", "load_config", "preset_names", "with_overrides", "ConfigError",
           "DeadlockError", "ProgramError", "SimulationError", "XbarsimError", "Program",
           "TensorPort", "Report", "simulate"]
