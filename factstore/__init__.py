"""factstore: ROME model editing with a persistent, replayable fact store."""

__version__ = "0.1.0"
