"""APCD domain: the feed's column layouts (SPEC Appendix A) and the synthetic data generator."""
