package seekmoe;

/** The answer of /v2/generate: the text written after the prompt, why it stopped ("length", "stop"), the usage. */
public record Generation(String id, String text, String finishReason, Usage usage) {
}
