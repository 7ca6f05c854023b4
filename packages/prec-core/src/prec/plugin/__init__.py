"""The plugin system: hook specs (``prec.hookspecs``), entry-point discovery, registration, the registry of
precision x accelerator pairs, the conflict rule, failed-lookup explanations and the catalogue of first-party
packages. The caller hands in prec-core's internal plugins (``prec.training.composition``).

For plugin authors: :class:`Requirement` says why an optional dependency cannot be used, without importing it, and
imports it quietly when a precision is selected (see ``prec.plugin.requirements``)."""

from prec.plugin.requirements import Requirement, quiet_loggers, version_tuple

__all__ = ["Requirement", "quiet_loggers", "version_tuple"]
