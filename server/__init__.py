"""The HTTP service over the registry service layer."""
