"""Training XR0: the training stages (xr0.train.stages) and the fine-tuning trainer."""
