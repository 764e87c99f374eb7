"""Error types: each names the file, node, op or shape involved so the CLI can print one line."""


class WoodpeckerError(Exception):
    """Base of every error the tool reports to a user without a traceback."""


class ModelError(WoodpeckerError):
    """The model file is missing, malformed, or uses something we cannot read."""


class UnsupportedOpError(WoodpeckerError):
    """No implementation, not even the ONNX Runtime fallback, can run a node."""


class InputError(WoodpeckerError):
    """An input given to a plan has the wrong name, shape or dtype."""


class PlanError(WoodpeckerError):
    """A plan directory is missing, incomplete, tampered with, or did not verify."""


class RecordsError(WoodpeckerError):
    """The tuning-records database is damaged or not ours."""


class MemoryLimitError(WoodpeckerError):
    """A model or plan needs more memory than --max-memory allows or than the machine has available."""
