"""Few-shot SAM: a frozen SAM encoder, support tokens from a few annotated images, and only the
mask decoder fine-tuned on cached embeddings (``wsisam-train fewshot``)."""
