"""agentwire: watch and steer AI agents in real time."""

__version__ = "0.1.0"
