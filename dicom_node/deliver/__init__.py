"""Delivering results: the outbox, the one C-STORE sender, outgoing associations."""
