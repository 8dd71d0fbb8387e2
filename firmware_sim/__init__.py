"""Simulated cover nodes and RS-485 sensors that speak the real wire protocols."""
