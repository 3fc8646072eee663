"""APCD domain: the feed's column layouts and the synthetic data generator."""
