"""One training run: its frozen config, the plain training loop, its diagnostics, the device it
runs on, and `runner.execute`, which records it (tracked or not)."""
