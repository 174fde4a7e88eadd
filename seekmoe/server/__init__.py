"""The HTTP server: `seekmoe serve`, the native API (/v2/generate) and the OpenAI-compatible one (/v1).

config.py     ServeConfig, the serve command's settings
schemas.py    request and response bodies (pydantic)
errors.py     HTTPError, and the one table of which status and OpenAI error each seekmoe error gets
streams.py    a request's generation while it runs: Job, server-sent events, the access log's record
tool_chat.py  chat with tools: the tool loop (seekmoe.text.tool_calls.ToolLoop) over the serving class
annotate.py   a reply's regions drawn on the request's last image: the images beside the text
serving.py    the serving class: a request body -> SamplingParams -> the engine -> a response or SSE chunks
metrics.py    Prometheus metrics
app.py        FastAPI routes (thin), keys, body limit, access log, errors in OpenAI's shape, /health

The `seekmoe serve` command (seekmoe/cli/serve.py) imports only config.py before it serves: fastapi and torch load
late.
"""
