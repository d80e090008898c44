"""Model: the open_lm architecture, vocabulary expansion and initialisation strategies."""
