"""HTTP routes, one module per resource, and the middlewares they share."""
