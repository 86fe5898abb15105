"""Media in: loading and preprocessing (I/O) and the vision and audio encoders (pure model code)."""
