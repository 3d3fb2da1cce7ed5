"""The gateway's services: the logic behind the thin routes."""
