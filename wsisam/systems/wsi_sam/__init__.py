"""WSI-SAM: SAM-family encoder on HR and LR tiles, HR/LR heads fused in one decoder graph."""
