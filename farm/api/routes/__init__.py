"""The API's routes, one module per resource; importing them registers them on the blueprint."""

from farm.api.routes import datasets, engines, jobs, models, submissions, system, tokens

__all__ = ["datasets", "engines", "jobs", "models", "submissions", "system", "tokens"]
