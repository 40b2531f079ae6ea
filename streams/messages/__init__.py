"""Messages: the envelope every record carries and the registry of payload types."""
