"""The HTTP routes, one router per area: identify, gallery, health (and the review page)."""
