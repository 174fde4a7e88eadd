package seekmoe;

import java.util.List;

/**
 * The answer of /v2/generate: the text written after the prompt, why it stopped ("length", "stop"), the usage, and
 * {@code images}: when the text names regions of the request's last image, that image with them drawn, as PNG bytes
 * (else empty).
 */
public record Generation(String id, String text, String finishReason, Usage usage, List<byte[]> images) {
    public Generation {
        images = images == null ? List.of() : List.copyOf(images);
    }
}
