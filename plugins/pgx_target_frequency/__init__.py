"""Target-frequency report domain.

:mod:`pgx_target_frequency.rules` computes, from gold medical tables, the ICD-code frequency by
diagnosis position and the procedure-code frequency per ``(event_year, age_band)``, as partial
aggregates that merge exactly (so partitions and row groups can be counted separately), the
suggested ICD mappings, and small-count suppression for reports that leave the lake.
"""
