package seekmoe;

import java.util.List;

/**
 * One streamed piece: the new {@code text} of choice {@code index}; {@code finishReason} on its last piece, else
 * null; {@code usage} on the last chunk of a /v2/generate stream, or of a chat stream with include_usage (then the
 * text is empty), else null; {@code images} on the piece that finishes an answer naming regions of the request's
 * last image (that image with them drawn, as PNG bytes), else empty.
 */
public record Chunk(String id, String text, int index, String finishReason, Usage usage, List<byte[]> images) {
    public Chunk {
        images = images == null ? List.of() : List.copyOf(images);
    }
}
