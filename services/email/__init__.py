"""Email service: one confirmation per ``order.created`` event, one cancellation notice per
``order.cancelled`` event, never a confirmation for an order it knows as cancelled."""
