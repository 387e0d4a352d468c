"""Inventory service: reserves stock for each ``order.created`` event, exactly once, and announces
its verdict (and a cancelled order's release) through its own outbox."""
