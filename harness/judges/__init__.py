"""Judges: the protocol and config loading, the API judge, the local judge, agreement with GPT-4 Turbo."""
