"""Teaching a model: targets, augmentation, training crops, the optimisation loop, fine-tuning."""
