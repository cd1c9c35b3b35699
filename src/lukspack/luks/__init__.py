"""LUKS containers: headers, key slots, the anti-forensic splitter and key derivation."""
