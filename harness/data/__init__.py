"""Data: synthetic smoke sets, tokenizers, shards with a versioned manifest, the training stream."""
