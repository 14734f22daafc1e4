"""Integrations with servers and frameworks; each module imports only its own framework."""
