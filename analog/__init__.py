"""analog package."""
