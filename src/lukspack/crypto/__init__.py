"""Block cipher modes for LUKS payloads and key slots, built on OpenSSL's AES."""
