"""The quality lab: real LoRA specialists of MiniLM (image, audio, pseudo-3-D digits) merged by `ssam merge`."""
