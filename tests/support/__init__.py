"""Test support: synthetic and real CT series, shared by unit, integration and interop tests."""
