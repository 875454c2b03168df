"""ffmpeg and frames (numpy): probing, decoding, encoding. Knows nothing of models."""
