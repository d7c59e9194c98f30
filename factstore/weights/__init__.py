"""Weights: starter assets, checkpoint identity and loading, corpora, key statistics, stored
vectors, and replaying an edit log onto a model's down-projections."""
