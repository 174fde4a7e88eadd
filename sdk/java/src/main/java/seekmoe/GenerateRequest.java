package seekmoe;

import com.google.gson.JsonObject;

/**
 * A /v2/generate request: the prompt is continued as it is, without a chat template.
 *
 * <pre>{@code
 * GenerateRequest.builder("Call me Ishmael.").maxTokens(200).temperature(0.7).build()
 * }</pre>
 *
 * Fields left unset get the server's defaults; {@link Builder#param} sends any other field the server knows
 * (top_k, min_p, ignore_eos...).
 */
public final class GenerateRequest {
    private final JsonObject body;

    private GenerateRequest(JsonObject body) {
        this.body = body;
    }

    public static Builder builder(String prompt) {
        return new Builder(prompt);
    }

    JsonObject body() {
        return body.deepCopy();
    }

    public static final class Builder extends Json.Fields<Builder> {
        private Builder(String prompt) {
            put("prompt", Json.required(prompt, "prompt"));
        }

        public Builder maxTokens(int maxTokens) {
            return put("max_tokens", maxTokens);
        }

        public Builder temperature(double temperature) {
            return put("temperature", temperature);
        }

        public Builder topP(double topP) {
            return put("top_p", topP);
        }

        /** End where the text holds one of these (not returned). */
        public Builder stop(String... stop) {
            return put("stop", java.util.List.of(stop));
        }

        public Builder seed(long seed) {
            return put("seed", seed);
        }

        public GenerateRequest build() {
            return new GenerateRequest(fields());
        }
    }
}
