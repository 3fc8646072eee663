"""Update-codes stage domain: pass-2 normalization of target codes in gold, in place.

:mod:`pgx_update_codes.rules` holds the pure, vectorized rules: code maps (:class:`CodeMap`), the
ICD diagnosis normalization, the procedure-code normalization and
:func:`~pgx_update_codes.rules.update_codes_table`, which applies them to a gold table or to one
record batch at a time (so a stage can stream a gold object row group by row group).
"""
