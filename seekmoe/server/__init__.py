"""The HTTP server: `seekmoe serve`, the native API (/v2/generate) and the OpenAI-compatible one (/v1).

config.py   ServeConfig, the serve command's settings
schemas.py  request and response bodies (pydantic)
serving.py  the serving class: a request body -> SamplingParams -> the engine -> a response or SSE chunks
metrics.py  Prometheus metrics
app.py      FastAPI routes (thin), keys, body limit, access log, errors in OpenAI's shape, /health
cli.py      the `seekmoe serve` command

Only config.py and cli.py are imported by the `seekmoe` command before it serves: fastapi and torch load late.
"""
