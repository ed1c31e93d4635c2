"""Validation suites, episode quality scores and the referee."""
