package seekmoe;

/**
 * One streamed piece: the new {@code text} of choice {@code index}; {@code finishReason} on its last piece, else
 * null; {@code usage} on the last chunk of a /v2/generate stream, or of a chat stream with include_usage (then the
 * text is empty), else null.
 */
public record Chunk(String id, String text, int index, String finishReason, Usage usage) {
}
