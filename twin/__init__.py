"""The CQD gain-model digital twin: pure numpy physics, sample presets."""
