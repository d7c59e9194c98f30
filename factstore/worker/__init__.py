"""Edit workers: long-running processes that keep models' heads warm and compute the queue."""
