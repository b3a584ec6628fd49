"""Nightly device-farm runs: ``python -m host.farm run --config farm.toml`` and ``python -m host.farm report``."""
