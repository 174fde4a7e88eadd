package seekmoe;

import com.google.gson.JsonObject;

/**
 * A /v2/summarize request: a document of any length.
 *
 * <pre>{@code
 * SummarizeRequest.builder(text).maxLength(120).style("paragraph").build()
 * }</pre>
 */
public final class SummarizeRequest {
    private final JsonObject body;

    private SummarizeRequest(JsonObject body) {
        this.body = body;
    }

    public static Builder builder(String text) {
        return new Builder(text);
    }

    JsonObject body() {
        return body.deepCopy();
    }

    public static final class Builder extends Json.Fields<Builder> {
        private Builder(String text) {
            put("text", Json.required(text, "text"));
        }

        /** The most tokens in the summary (the server's default: 200). */
        public Builder maxLength(int maxLength) {
            return put("max_length", maxLength);
        }

        /** bullets (the default), paragraph, or sections (keeps the document's own headings). */
        public Builder style(String style) {
            return put("style", style);
        }

        /** hybrid (the default), abstractive (the model, map-reduce) or extractive (no model). */
        public Builder method(String method) {
            return put("method", method);
        }

        public SummarizeRequest build() {
            return new SummarizeRequest(fields());
        }
    }
}
