"""The champion in production: ``python -m pipeline.serve`` (docs/serving.md).

- :mod:`.champion`: the served version follows ``name@alias`` (poll, webhook, swap);
- :mod:`.batcher`: dynamic batching of concurrent requests into one forward pass;
- :mod:`.protocol`: the three ways in (MLflow's /invocations, Open Inference Protocol V2,
  image files), parsed and answered as pure functions;
- :mod:`.log`: the prediction log (SQLite or PostgreSQL), written off the request path;
- :mod:`.metrics`: Prometheus metrics;
- :mod:`.app`: the FastAPI app that puts them together.
"""
