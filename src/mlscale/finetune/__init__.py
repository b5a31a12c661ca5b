"""Fine-tuning: instruction tuning (SFT) and preference tuning (DPO), full, LoRA or QLoRA."""
