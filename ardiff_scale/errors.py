"""Errors meant for people: each names the file, field or value at fault and what would be valid."""


class ArdiffError(Exception):
    """Base class; the CLI prints these without a traceback and exits with status 2."""


class ConfigError(ArdiffError, ValueError):
    """A recipe, override or config value is invalid."""


class DataError(ArdiffError):
    """An input file, shard or tokenizer is missing, corrupt or inconsistent."""


# EX_TEMPFAIL from sysexits.h: the job did not fail, it was asked to stop and may simply be run again.
PREEMPTED_EXIT = 75


class Preempted(ArdiffError):
    """Training stopped on a preemption signal after writing a checkpoint; the CLI exits with
    PREEMPTED_EXIT, and the same command continues from that checkpoint."""
