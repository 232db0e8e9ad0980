"""Offline: the market simulator, training rows, the user, price and recommend models, and `pricing-train`."""
