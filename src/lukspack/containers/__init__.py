"""Encrypted layouts: where each ciphertext byte of an output goes, and under which IV."""
