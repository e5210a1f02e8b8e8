"""Pure measure functions: tensors in, tensors out (no file I/O)."""
