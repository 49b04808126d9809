"""The package version, in a module of its own so that run folders, reports and exports can
record it without importing `graft` (whose __init__ imports the whole pipeline)."""

__version__ = "0.1.0"
