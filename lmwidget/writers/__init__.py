"""Writers: a run's record written to other tools' files while it trains (TensorBoard's event files)."""
