"""Tools above the engine: the command line, calibration, environment reports and the
benchmark runners. Nothing in the engine imports this package."""
