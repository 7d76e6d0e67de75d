"""SAM-MIL: SAM automatic masks group patch features, an attention-MIL head classifies the slide."""
