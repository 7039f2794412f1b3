"""Stand-ins for servers the project talks to but that cannot run here (tests only)."""
