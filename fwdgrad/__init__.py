"""fwdgrad package."""
