"""The paper's arms, by the experiments that train them: one list for reproduce, collect and figures."""

INITS = ("random_init", "pretrained", "pretrained_aligned")        # the main comparison
FREEZING = ("freeze_embeddings", "freeze_layernorm", "freeze_ffn", "freeze_layers")
UNCONDITIONAL = ("uncond_random_init", "uncond_pretrained")
ALIGNMENT = ("align", "align[shuffled captions]")                  # the alignment and its control
LONG = ("random_init_long",)                                        # the small world's long reference run

# Beyond the paper: the LM sizes beside each scale's own (reproduce --beyond trains both arms at
# each; the claims name them {size1} and {size2}). Paper: open_lm's 160M and 411M beside the 1B.
OTHER_LM_SIZES = {"paper": ("open_lm_160m", "open_lm_411m"), "smoke": ("smoke_d64", "smoke_d192"),
                  "micro": ("micro_d16", "smoke_d64")}
# ...and the dataset of the same images under the other image tokenizer ({tokenizer2}).
OTHER_TOKENIZER_DATA = {"paper": "hqitp_270m", "smoke": "smoke_c256", "micro": "micro_c64"}
