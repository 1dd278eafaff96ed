"""Where merged tensors go: sharded safetensors, PEFT adapters, modality files; always atomically."""
