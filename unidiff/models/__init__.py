"""Denoisers: the contract and the one builder (`architectures`), the built-in transformer (`transformer`), and
what wraps or reaches into one: the key/value caches (`kvcache`), strand symmetry (`symmetry`), rows cut to their
widths (`widths`) and int8 (`quantize`)."""
