"""The URI schemes a lake, state root or input may use, and the store module serving each.

Adding a scheme (``gs://``, say) is a store module (see :mod:`pgx_core.lake.storage_local`) and a
line here. This module imports nothing, so the run-spec models can check schemes without storage.
"""

STORES: dict[str, str] = {
    "file": "pgx_core.lake.storage_local:LocalStore",
    "s3": "pgx_core.lake.storage_s3:S3Store",
}
