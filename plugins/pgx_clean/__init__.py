"""Clean stage domain: silver → gold, per partition.

:mod:`pgx_clean.rules` holds the pure, vectorized rules (Arrow in, Arrow out): string
normalization, amount parsing, NDC-11 derivation, drug-name canonicalization and drug maps,
duplicate removal and the gold schema. It imports no Ray, boto3 or pluggy; the stage class that
reads silver, promotes gold and records state lives elsewhere and calls
:func:`pgx_clean.rules.clean_partition`.
"""
