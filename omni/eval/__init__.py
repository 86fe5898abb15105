"""Batch evaluation: speech recognition (WER/CER) and visual question answering."""
