"""The plugin system: hook specs (``prec.hookspecs``), entry-point discovery, registration, the registry of
precision x accelerator pairs, the conflict rule, failed-lookup explanations and the catalogue of first-party
packages. The caller hands in prec-core's internal plugins (``prec.training.composition``)."""
