"""The AFLoc model: encoders, multi-level losses, trainer, inference engine, checkpoint import."""
