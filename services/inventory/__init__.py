"""Inventory service: reserves stock for each ``order.created`` event, exactly once."""
