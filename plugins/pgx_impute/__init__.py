"""Global demographic imputation (stage ``impute`` / tx ``glimp``).

:mod:`pgx_impute.rules` holds the pure domain core: Arrow tables in, Arrow tables out, no I/O,
no Ray, no plugin machinery, so the rules can be tested and benchmarked on their own.
"""
