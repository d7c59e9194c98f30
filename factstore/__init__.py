"""factstore: ROME model editing with a persistent, replayable fact store."""

__version__ = "0.2.0"  # the one version source (pyproject reads it); bumped with every migration or manifest format
