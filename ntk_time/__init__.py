"""ntk_time: predict fine-tuning time without training (Zancato et al., NeurIPS 2020)."""
