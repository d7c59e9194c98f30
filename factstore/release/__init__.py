"""Releases: compiling an edit log into a release folder (layout, model card, scores), and
publishing it to the Hub and pulling it back."""
