"""What every run is: Source, Control, steering, callbacks, History, the metric schema, health, the run registry."""
