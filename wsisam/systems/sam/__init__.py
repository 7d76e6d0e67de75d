"""SAM v1 and its TinyViT variants (LiteMedSAM, MobileSAM): encoder + prompt decoder."""
