"""Scoring samples: feature extractors, the protocol and real-data floors, neighbours, memorisation, the dataset classifier."""
