"""Errors meant for people: each names the file, field or value at fault and what would be valid."""


class ArdiffError(Exception):
    """Base class; the CLI prints these without a traceback and exits with status 2."""


class ConfigError(ArdiffError, ValueError):
    """A recipe, override or config value is invalid."""


class DataError(ArdiffError):
    """An input file, shard or tokenizer is missing, corrupt or inconsistent."""
