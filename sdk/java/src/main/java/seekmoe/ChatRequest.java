package seekmoe;

import com.google.gson.JsonArray;
import com.google.gson.JsonObject;
import java.util.List;

/**
 * A /v1/chat/completions request: the messages, rendered with the model's chat template.
 *
 * <pre>{@code
 * ChatRequest.builder().system("Be brief.").user("Tell me a story.").maxTokens(60).build()
 * }</pre>
 */
public final class ChatRequest {
    private final JsonObject body;

    private ChatRequest(JsonObject body) {
        this.body = body;
    }

    public static Builder builder() {
        return new Builder();
    }

    /** One user message. */
    public static ChatRequest of(String userMessage) {
        return builder().user(userMessage).build();
    }

    JsonObject body() {
        return body.deepCopy();
    }

    public static final class Builder extends Json.Fields<Builder> {
        private final JsonArray messages = new JsonArray();

        private Builder() {
        }

        public Builder message(Message message) {
            JsonObject m = new JsonObject();
            m.addProperty("role", Json.required(message.role(), "a message's role"));
            m.addProperty("content", Json.required(message.content(), "a message's content"));
            messages.add(m);
            return this;
        }

        public Builder messages(List<Message> messages) {
            messages.forEach(this::message);
            return this;
        }

        public Builder system(String content) {
            return message(Message.system(content));
        }

        public Builder user(String content) {
            return message(Message.user(content));
        }

        public Builder assistant(String content) {
            return message(Message.assistant(content));
        }

        /** The served model's name; unset, the server's model answers. */
        public Builder model(String model) {
            return put("model", model);
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

        /** Completions to write (choices). */
        public Builder n(int n) {
            return put("n", n);
        }

        public Builder stop(String... stop) {
            return put("stop", List.of(stop));
        }

        public Builder seed(long seed) {
            return put("seed", seed);
        }

        /** Streams end with a chunk of the usage and no text. */
        public Builder includeUsage() {
            return put("stream_options", java.util.Map.of("include_usage", true));
        }

        public ChatRequest build() {
            JsonObject body = fields();
            body.add("messages", messages.deepCopy());
            return new ChatRequest(body);
        }
    }
}
