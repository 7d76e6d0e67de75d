"""Real tissue tiles from slides, preprocessed exactly as the runtime does (parity, calibration)."""
