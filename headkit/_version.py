"""The version of headkit (one home: the package, the CLI and the build read it here)."""

__version__ = "0.2.0"
