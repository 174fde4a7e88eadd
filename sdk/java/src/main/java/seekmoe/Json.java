package seekmoe;

import com.google.gson.Gson;
import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import com.google.gson.JsonParseException;
import com.google.gson.JsonParser;
import java.util.ArrayList;
import java.util.List;

/** Request bodies in, results out: the JSON of the wire, read field by field so a missing one is named. */
final class Json {
    private static final Gson GSON = new Gson();

    private Json() {
    }

    /** What the request builders share: the body's fields, and {@link #param} for any other field. */
    abstract static class Fields<B extends Fields<B>> {
        private final JsonObject fields = new JsonObject();

        /** Any other field the server knows (top_k, min_p, ignore_eos, ...), as a String, Number, Boolean, List or
         *  Map; null removes it. */
        public B param(String name, Object value) {
            return put(name, value);
        }

        @SuppressWarnings("unchecked")
        B put(String name, Object value) {
            if (value == null) {
                fields.remove(name);
            } else {
                fields.add(name, GSON.toJsonTree(value));
            }
            return (B) this;
        }

        JsonObject fields() {
            return fields.deepCopy();
        }
    }

    static <T> T required(T value, String name) {
        if (value == null) {
            throw new IllegalArgumentException(name + " must not be null");
        }
        return value;
    }

    static String write(JsonObject body) {
        return GSON.toJson(body);
    }

    /** The object a response holds; ApiException when it is not JSON or not an object. */
    static JsonObject object(String text, String what) {
        try {
            JsonElement e = JsonParser.parseString(text);
            if (e.isJsonObject()) {
                return e.getAsJsonObject();
            }
        } catch (JsonParseException ignored) {
            // answered below
        }
        throw new ApiException(ApiException.NO_STATUS, what + " is not a JSON object: " + clip(text), null, null,
                               null);
    }

    /** The error in a body of OpenAI's shape {"error": {...}}; the fallback message when it is not one. */
    static ApiException error(int status, String text, String fallback) {
        JsonObject body;
        try {
            JsonElement e = JsonParser.parseString(text);
            body = e.isJsonObject() ? e.getAsJsonObject() : null;
        } catch (JsonParseException e) {
            body = null;
        }
        JsonElement err = body == null ? null : body.get("error");
        if (err == null || !err.isJsonObject()) {
            return new ApiException(status, text.isBlank() ? fallback : clip(text), null, null, null);
        }
        JsonObject o = err.getAsJsonObject();
        String message = optString(o, "message");
        return new ApiException(status, message != null ? message : fallback, optString(o, "type"),
                                optString(o, "param"), optString(o, "code"));
    }

    static String clip(String text) {
        return text.length() <= 200 ? text : text.substring(0, 200) + "...";
    }

    static String optString(JsonObject o, String name) {
        JsonElement e = o.get(name);
        return e == null || e.isJsonNull() ? null : e.getAsString();
    }

    static JsonElement field(JsonObject o, String name) {
        JsonElement e = o.get(name);
        if (e == null) {
            throw new ApiException(ApiException.NO_STATUS, "the answer has no field " + name + ": " + clip(o.toString()),
                                   null, null, null);
        }
        return e;
    }

    static String string(JsonObject o, String name) {
        return field(o, name).getAsString();
    }

    static JsonObject obj(JsonObject o, String name) {
        return field(o, name).getAsJsonObject();
    }

    static JsonArray array(JsonObject o, String name) {
        return field(o, name).getAsJsonArray();
    }

    static Usage usage(JsonElement e) {
        if (e == null || e.isJsonNull()) {
            return null;
        }
        JsonObject o = e.getAsJsonObject();
        return new Usage(field(o, "prompt_tokens").getAsInt(), field(o, "completion_tokens").getAsInt(),
                         field(o, "total_tokens").getAsInt());
    }

    static Generation generation(JsonObject o) {
        return new Generation(string(o, "id"), string(o, "generated_text"), optString(o, "finish_reason"),
                              usage(field(o, "usage")), Images.decode(o.get("images")));
    }

    static ChatCompletion chat(JsonObject o) {
        List<ChatCompletion.Choice> choices = new ArrayList<>();
        for (JsonElement e : array(o, "choices")) {
            JsonObject c = e.getAsJsonObject();
            JsonObject m = obj(c, "message");
            String content = optString(m, "content");  // null in an answer of tool calls only
            choices.add(new ChatCompletion.Choice(field(c, "index").getAsInt(),
                                                  new Message(string(m, "role"), content == null ? "" : content,
                                                              Images.decode(m.get("images"))),
                                                  optString(c, "finish_reason")));
        }
        return new ChatCompletion(string(o, "id"), string(o, "model"), field(o, "created").getAsLong(),
                                  List.copyOf(choices), usage(field(o, "usage")));
    }

    static Summary summary(JsonObject o) {
        return new Summary(string(o, "summary"), field(o, "summary_tokens").getAsInt(), string(o, "style"),
                           string(o, "method"));
    }

    static List<LayerLoad> expertLoad(JsonObject o) {
        List<LayerLoad> layers = new ArrayList<>();
        for (JsonElement e : array(o, "layers")) {
            JsonObject l = e.getAsJsonObject();
            List<Long> counts = new ArrayList<>();
            array(l, "counts").forEach(c -> counts.add(c.getAsLong()));
            layers.add(new LayerLoad(field(l, "layer").getAsInt(), List.copyOf(counts)));
        }
        return List.copyOf(layers);
    }

    /** The chunks of one server-sent event of /v2/generate or /v1/chat/completions; an error event throws. */
    static List<Chunk> chunks(JsonObject o) {
        if (o.has("error")) {
            throw error(ApiException.NO_STATUS, o.toString(), "the stream failed");
        }
        Usage usage = usage(o.get("usage"));
        String id = string(o, "id");
        if (!o.has("choices")) {  // native
            return List.of(new Chunk(id, string(o, "text"), 0, optString(o, "finish_reason"), usage,
                                     Images.decode(o.get("images"))));
        }
        JsonArray choices = array(o, "choices");
        if (choices.isEmpty()) {  // the usage chunk
            return List.of(new Chunk(id, "", 0, null, usage, List.of()));
        }
        List<Chunk> out = new ArrayList<>();
        for (JsonElement e : choices) {
            JsonObject c = e.getAsJsonObject();
            JsonObject delta = c.has("delta") ? obj(c, "delta") : null;
            String text = delta != null ? optString(delta, "content") : optString(c, "text");
            out.add(new Chunk(id, text == null ? "" : text, field(c, "index").getAsInt(),
                              optString(c, "finish_reason"), usage,
                              Images.decode(delta != null ? delta.get("images") : null)));
        }
        return out;
    }
}
