"""The ROME algorithm: tensors in, tensors out. No database, Hub, prints or global state."""
