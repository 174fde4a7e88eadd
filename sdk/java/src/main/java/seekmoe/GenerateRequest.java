package seekmoe;

import com.google.gson.JsonObject;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * A /v2/generate request: the prompt is continued as it is, without a chat template.
 *
 * <pre>{@code
 * GenerateRequest.builder("Call me Ishmael.").maxTokens(200).temperature(0.7).build()
 * GenerateRequest.builder("Where is the LED?").image(Path.of("circuit.png")).build()
 * }</pre>
 *
 * Fields left unset get the server's defaults; {@link Builder#param} sends any other field the server knows
 * (top_k, min_p, ignore_eos...).
 */
public final class GenerateRequest {
    private final JsonObject body;
    private final List<byte[]> images;

    private GenerateRequest(JsonObject body, List<byte[]> images) {
        this.body = body;
        this.images = images;
    }

    public static Builder builder(String prompt) {
        return new Builder(prompt);
    }

    /** The JSON body, its images as data: URLs, each checked against the client's maxMediaBytes. */
    JsonObject body(int maxMediaBytes) {
        JsonObject out = body.deepCopy();
        if (!images.isEmpty()) {
            out.add("images", Images.encode(images, "the request", maxMediaBytes, false));
        }
        return out;
    }

    public static final class Builder extends Json.Fields<Builder> {
        private final List<byte[]> images = new ArrayList<>();

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

        /**
         * An image (PNG, JPEG or GIF bytes) shown before the prompt, which becomes its question in one user turn;
         * checked when sent (at most the client's maxMediaBytes).
         */
        public Builder image(byte[] image) {
            images.add(Json.required(image, "an image").clone());
            return this;
        }

        /** The image of a file, read now: {@link Images#read(Path)}. */
        public Builder image(Path path) {
            return image(Images.read(path));
        }

        public GenerateRequest build() {
            return new GenerateRequest(fields(), List.copyOf(images));
        }
    }
}
