"""Speech out: the Talker (Thinker states -> codec tokens) and Token2Wav (codec tokens -> waveform),
non-streaming and chunk by chunk."""
