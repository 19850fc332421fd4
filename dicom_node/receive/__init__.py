"""Receiving: the storage SCP and its handlers, the durable spool, series assembly and routing."""
