"""Shipped policies and calibrated profiles (JSON), installed as kvconvert.profiles."""
