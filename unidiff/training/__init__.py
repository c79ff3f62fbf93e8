"""Training and evaluation: the TOML configuration (`config`), the loop (`train`), held-out figures (`evaluate`),
what every objective shares (`losses`) and model folders (`checkpoint`)."""
