"""Small utilities (model summary)."""
