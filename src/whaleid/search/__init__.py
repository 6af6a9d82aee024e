"""From embeddings to answers: ranking, indexes, scoring, thresholds, metrics and the Identifier."""
