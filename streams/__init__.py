"""Live pipeline: settings, wire schemas, features, pricing, scoring, the Faust app."""
