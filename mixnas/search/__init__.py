"""Candidate evaluation: accuracy, FLOPs, parameters and latency; the search runners."""
