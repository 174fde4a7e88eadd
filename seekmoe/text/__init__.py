"""Text at the edges: the tokenizer, the chat template, streaming detokenisation, tool calls, summaries."""
