"""The score given to keys a query must not see, shared by every attention path so that all agree to the bit."""

# Finite, not -inf: a query that sees no key at all (padding) gets a uniform row instead of NaN.
MASKED = -1e30
