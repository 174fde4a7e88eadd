package seekmoe;

import java.util.List;

/**
 * One turn of a chat, and its images: in a request, PNG, JPEG or GIF bytes shown before the text ({@link
 * Images#read} reads a file); in an answer that names regions of the request's last image, that image with them
 * drawn, as PNG bytes (else empty).
 */
public record Message(String role, String content, List<byte[]> images) {
    public Message {
        images = images == null ? List.of() : List.copyOf(images);
    }

    public Message(String role, String content) {
        this(role, content, List.of());
    }

    public static Message system(String content) {
        return new Message("system", content);
    }

    public static Message user(String content, byte[]... images) {
        return new Message("user", content, List.of(images));
    }

    public static Message assistant(String content) {
        return new Message("assistant", content);
    }
}
