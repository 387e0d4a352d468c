"""Email service: one confirmation per ``StockReserved``, one rejection notice per
``StockRejected``, one cancellation notice per ``OrderCancelled``; never a verdict mail for an
order it knows as cancelled, never both verdicts' mails for one order."""
