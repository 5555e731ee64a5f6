"""Fine-tuning XR0 on episodes of the store (xr0.train.trainer; presets in xr0.train.config)."""
