package seekmoe;

import com.google.gson.JsonArray;
import com.google.gson.JsonElement;
import com.google.gson.JsonObject;
import java.io.IOException;
import java.io.InputStream;
import java.nio.file.AccessDeniedException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;

/**
 * Images in and out. In: the bytes of a PNG, JPEG or GIF (by their leading bytes), at most
 * {@link Client.Builder#maxMediaBytes} each, sent as data: URLs; {@link #read} reads a file. Out: the annotated PNGs
 * of an answer that names regions of the request's last image, decoded from base64.
 */
public final class Images {
    /** The server's default limit on one image, and the client's unless {@link Client.Builder#maxMediaBytes}. */
    public static final int MAX_MEDIA_BYTES = 10 << 20;

    private Images() {
    }

    /** The bytes of a PNG, JPEG or GIF file of at most {@link #MAX_MEDIA_BYTES}; see {@link #read(Path, int)}. */
    public static byte[] read(Path path) {
        return read(path, MAX_MEDIA_BYTES);
    }

    /**
     * The bytes of a PNG, JPEG or GIF file; IllegalArgumentException naming the file when it is missing, a
     * directory, unreadable, empty, over maxBytes (it is not read past them) or not such an image.
     */
    public static byte[] read(Path path, int maxBytes) {
        Json.required(path, "an image's path");
        if (maxBytes < 1) {
            throw new IllegalArgumentException("maxBytes must be >= 1, got " + maxBytes);
        }
        if (Files.isDirectory(path)) {
            throw new IllegalArgumentException("image file " + path + " is a directory, not a file");
        }
        byte[] data;
        try (InputStream in = Files.newInputStream(path)) {
            // never more: a huge file (or a device) is refused unread
            data = in.readNBytes((int) Math.min(Integer.MAX_VALUE - 8L, maxBytes + 1L));
        } catch (NoSuchFileException e) {
            throw new IllegalArgumentException("image file " + path + " does not exist", e);
        } catch (AccessDeniedException e) {
            throw new IllegalArgumentException("cannot read image file " + path + ": permission denied", e);
        } catch (IOException e) {
            throw new IllegalArgumentException("cannot read image file " + path + ": " + e.getMessage(), e);
        }
        if (data.length > maxBytes) {
            throw new IllegalArgumentException(String.format("image file %s is over the %,d-byte limit", path,
                                                             maxBytes));
        }
        mime(data, "image file " + path);
        return data;
    }

    /** The data: URL of an image to send; IllegalArgumentException naming it (`what`) when it is not one. */
    static String dataUrl(byte[] data, String what, int maxBytes) {
        Json.required(data, what);
        if (data.length > maxBytes) {
            throw new IllegalArgumentException(String.format("%s is %,d bytes; the limit is %,d (maxMediaBytes)",
                                                             what, data.length, maxBytes));
        }
        return "data:" + mime(data, what) + ";base64," + Base64.getEncoder().encodeToString(data);
    }

    /** The mime type the leading bytes say: the formats the server reads. */
    private static String mime(byte[] data, String what) {
        if (data.length == 0) {
            throw new IllegalArgumentException(what + " is empty");
        }
        if (starts(data, 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n')) {
            return "image/png";
        }
        if (starts(data, 0xff, 0xd8, 0xff)) {
            return "image/jpeg";
        }
        if (starts(data, 'G', 'I', 'F', '8', '7', 'a') || starts(data, 'G', 'I', 'F', '8', '9', 'a')) {
            return "image/gif";
        }
        throw new IllegalArgumentException(what + " is not a PNG, JPEG or GIF image (unknown file type)");
    }

    private static boolean starts(byte[] data, int... magic) {
        if (data.length < magic.length) {
            return false;
        }
        for (int i = 0; i < magic.length; i++) {
            if ((data[i] & 0xff) != magic[i]) {
                return false;
            }
        }
        return true;
    }

    /** The JSON array of the images to send: data: URLs ({@code parts}: OpenAI's image_url parts of them). */
    static JsonArray encode(List<byte[]> images, String what, int maxBytes, boolean parts) {
        JsonArray out = new JsonArray();
        for (int i = 0; i < images.size(); i++) {
            String url = dataUrl(images.get(i), "image " + (i + 1) + " of " + what, maxBytes);
            if (parts) {
                JsonObject imageUrl = new JsonObject();
                imageUrl.addProperty("url", url);
                JsonObject part = new JsonObject();
                part.addProperty("type", "image_url");
                part.add("image_url", imageUrl);
                out.add(part);
            } else {
                out.add(url);
            }
        }
        return out;
    }

    /**
     * The PNGs of an answer's images: /v2/generate's base64 strings or a chat message's image_url parts (data:
     * URLs); none when the field is absent. Not base64: ApiException.
     */
    static List<byte[]> decode(JsonElement images) {
        if (images == null || images.isJsonNull()) {
            return List.of();
        }
        List<byte[]> out = new ArrayList<>();
        for (JsonElement e : images.getAsJsonArray()) {
            String data = e.isJsonPrimitive() ? e.getAsString()
                : Json.string(Json.obj(e.getAsJsonObject(), "image_url"), "url");
            int start = data.startsWith("data:") ? data.indexOf(";base64,") : -1;
            try {
                if (data.startsWith("data:") && start < 0) {
                    throw new IllegalArgumentException("a data: URL without ;base64,");
                }
                out.add(Base64.getDecoder().decode(start < 0 ? data : data.substring(start + ";base64,".length())));
            } catch (IllegalArgumentException bad) {
                throw new ApiException(ApiException.NO_STATUS, "an image of the answer is not base64 ("
                                       + bad.getMessage() + "): " + Json.clip(data), null, null, null);
            }
        }
        return List.copyOf(out);
    }
}
