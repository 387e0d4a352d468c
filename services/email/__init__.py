"""Email service: sends one order-confirmation email per ``order.created`` event."""
