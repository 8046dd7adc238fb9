"""The SQL registry and the service layer."""
