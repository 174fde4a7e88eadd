package seekmoe;

import com.google.gson.JsonArray;
import com.google.gson.JsonObject;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

/**
 * A /v1/chat/completions request: the messages, rendered with the model's chat template.
 *
 * <pre>{@code
 * ChatRequest.builder().system("Be brief.").user("Tell me a story.").maxTokens(60).build()
 * ChatRequest.builder().user("Circle the LED", Path.of("circuit.png")).build()
 * }</pre>
 *
 * A message's images go as OpenAI's image_url parts (data: URLs) before its text, each checked when sent (at most
 * the client's maxMediaBytes).
 */
public final class ChatRequest {
    private final JsonObject body;
    private final List<Message> messages;

    private ChatRequest(JsonObject body, List<Message> messages) {
        this.body = body;
        this.messages = messages;
    }

    public static Builder builder() {
        return new Builder();
    }

    /** One user message. */
    public static ChatRequest of(String userMessage) {
        return builder().user(userMessage).build();
    }

    /** The JSON body, the messages' images as image_url parts, each checked against the client's maxMediaBytes. */
    JsonObject body(int maxMediaBytes) {
        JsonArray out = new JsonArray();
        for (int i = 0; i < messages.size(); i++) {
            Message message = messages.get(i);
            JsonObject m = new JsonObject();
            m.addProperty("role", message.role());
            if (message.images().isEmpty()) {
                m.addProperty("content", message.content());
            } else {
                JsonArray parts = Images.encode(message.images(), "message " + (i + 1), maxMediaBytes, true);
                if (!message.content().isEmpty()) {
                    JsonObject text = new JsonObject();
                    text.addProperty("type", "text");
                    text.addProperty("text", message.content());
                    parts.add(text);
                }
                m.add("content", parts);
            }
            out.add(m);
        }
        JsonObject full = body.deepCopy();
        full.add("messages", out);
        return full;
    }

    public static final class Builder extends Json.Fields<Builder> {
        private final List<Message> messages = new ArrayList<>();

        private Builder() {
        }

        public Builder message(Message message) {
            Json.required(message, "a message");
            Json.required(message.role(), "a message's role");
            Json.required(message.content(), "a message's content");
            messages.add(message);
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

        /** A user message showing these images (PNG, JPEG or GIF bytes) before its text. */
        public Builder user(String content, byte[]... images) {
            return message(Message.user(content, images));
        }

        /** A user message showing the images of these files, read now ({@link Images#read(Path)}). */
        public Builder user(String content, Path... images) {
            return message(Message.user(content, Arrays.stream(images).map(Images::read).toArray(byte[][]::new)));
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
            return new ChatRequest(fields(), List.copyOf(messages));
        }
    }
}
