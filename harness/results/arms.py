"""The paper's arms, by the experiments that train them: one list for reproduce, collect and figures."""

INITS = ("random_init", "pretrained", "pretrained_aligned")        # the main comparison
FREEZING = ("freeze_embeddings", "freeze_layernorm", "freeze_ffn", "freeze_layers")
UNCONDITIONAL = ("uncond_random_init", "uncond_pretrained")
ALIGNMENT = ("align", "align[shuffled captions]")                  # the alignment and its control
