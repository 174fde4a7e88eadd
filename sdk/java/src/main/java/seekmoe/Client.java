package seekmoe;

import com.google.gson.JsonObject;
import java.io.IOException;
import java.io.InputStream;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpConnectTimeoutException;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.net.http.HttpTimeoutException;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.List;
import java.util.Set;
import java.util.concurrent.ThreadLocalRandom;
import java.util.stream.Stream;

/**
 * A client for {@code seekmoe serve}: the native /v2 API (generate, summarize, the expert load) and OpenAI's chat.
 *
 * <pre>{@code
 * Client client = Client.builder().baseUrl("http://127.0.0.1:8000").apiKey("KEY").build();
 * System.out.println(client.generate(GenerateRequest.builder("Call me Ishmael.").maxTokens(50).build()).text());
 * try (Stream<Chunk> chunks = client.chatStream(ChatRequest.of("Tell me a story."))) {
 *     chunks.forEach(c -> System.out.print(c.text()));
 * }
 * }</pre>
 *
 * <p>Images: {@link GenerateRequest.Builder#image} and {@link ChatRequest.Builder#user(String, java.nio.file.Path...)}
 * send them; an answer that names regions of the request's last image
 * ({@code <|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>}) brings that image with them drawn, as PNG bytes:
 * {@code images()} of the Generation, the Message and the Chunk that finishes the answer. An image that is not a
 * PNG, JPEG or GIF, or is over {@link Builder#maxMediaBytes}, throws IllegalArgumentException before any request.
 *
 * <p>Refusals throw {@link ApiException} with the server's message, type, param and code; a server that cannot be
 * reached throws {@link ApiConnectionException}. Both are unchecked.
 *
 * <p>Retries: 429 (after its Retry-After), 503 and failed connections are retried up to {@code maxRetries} times
 * with exponential backoff and full jitter; other errors are not, and neither is a stream once its answer has
 * begun. A client is immutable and safe to share between threads.
 */
public final class Client {
    static final Set<Integer> RETRY_STATUS = Set.of(429, 503);  // busy, or still loading the model
    private static final String USER_AGENT = "seekmoe-java/0.1.0";

    private final URI baseUrl;
    private final String apiKey;
    private final Duration timeout;
    private final int maxRetries;
    private final Duration backoff;
    private final Duration maxBackoff;
    private final int maxMediaBytes;
    private final HttpClient http;

    private Client(Builder b) {
        String url = b.baseUrl.endsWith("/") ? b.baseUrl.substring(0, b.baseUrl.length() - 1) : b.baseUrl;
        try {
            this.baseUrl = URI.create(url);
        } catch (IllegalArgumentException e) {
            throw new IllegalArgumentException("baseUrl is not a URL: " + b.baseUrl, e);
        }
        String scheme = baseUrl.getScheme();
        if ((!"http".equals(scheme) && !"https".equals(scheme)) || baseUrl.getHost() == null) {
            throw new IllegalArgumentException("baseUrl must be http://HOST:PORT or https://..., got " + b.baseUrl);
        }
        this.apiKey = b.apiKey;
        this.timeout = b.timeout;
        this.maxRetries = b.maxRetries;
        this.backoff = b.backoff;
        this.maxBackoff = b.maxBackoff;
        this.maxMediaBytes = b.maxMediaBytes;
        this.http = HttpClient.newBuilder().connectTimeout(b.connectTimeout).version(HttpClient.Version.HTTP_1_1)
            .build();
    }

    public static Builder builder() {
        return new Builder();
    }

    /** POST /v2/generate: the prompt continued. */
    public Generation generate(GenerateRequest request) {
        return Json.generation(json("POST", "/v2/generate", request.body(maxMediaBytes)));
    }

    /** POST /v2/generate, streamed; close the stream (try-with-resources) when leaving it early. */
    public Stream<Chunk> generateStream(GenerateRequest request) {
        return stream("/v2/generate", request.body(maxMediaBytes));
    }

    /** POST /v1/chat/completions. */
    public ChatCompletion chat(ChatRequest request) {
        return Json.chat(json("POST", "/v1/chat/completions", request.body(maxMediaBytes)));
    }

    /** POST /v1/chat/completions, streamed; close the stream (try-with-resources) when leaving it early. */
    public Stream<Chunk> chatStream(ChatRequest request) {
        return stream("/v1/chat/completions", request.body(maxMediaBytes));
    }

    /** POST /v2/summarize. */
    public Summary summarize(SummarizeRequest request) {
        return Json.summary(json("POST", "/v2/summarize", request.body()));
    }

    /** GET /v2/expert_load: tokens routed to each expert of each MoE layer (with admin keys set, it needs one). */
    public List<LayerLoad> expertLoad() {
        return Json.expertLoad(json("GET", "/v2/expert_load", null));
    }

    /** GET /v1/models: the names a request's model may give. */
    public List<String> models() {
        return Json.array(json("GET", "/v1/models", null), "data").asList().stream()
            .map(m -> Json.string(m.getAsJsonObject(), "id")).toList();
    }

    private JsonObject json(String method, String path, JsonObject body) {
        HttpResponse<InputStream> response = send(method, path, body);
        return Json.object(read(response, path), "the answer of " + path);
    }

    private Stream<Chunk> stream(String path, JsonObject body) {
        body.addProperty("stream", true);
        ChunkIterator chunks = new ChunkIterator(send("POST", path, body).body(), baseUrl + path);
        return chunks.stream();
    }

    /** The answer to a request, retried as the class says; an error status throws ApiException. */
    private HttpResponse<InputStream> send(String method, String path, JsonObject body) {
        URI uri = baseUrl.resolve(baseUrl.getPath() + path);
        HttpRequest.Builder rb = HttpRequest.newBuilder(uri).timeout(timeout).header("User-Agent", USER_AGENT)
            .header("Accept", "application/json, text/event-stream");
        if (apiKey != null) {
            rb.header("Authorization", "Bearer " + apiKey);
        }
        if (body != null) {
            rb.header("Content-Type", "application/json")
                .method(method, HttpRequest.BodyPublishers.ofString(Json.write(body), StandardCharsets.UTF_8));
        } else {
            rb.method(method, HttpRequest.BodyPublishers.noBody());
        }
        HttpRequest request = rb.build();
        for (int attempt = 0; ; attempt++) {
            HttpResponse<InputStream> response = null;
            try {
                response = http.send(request, HttpResponse.BodyHandlers.ofInputStream());
            } catch (HttpConnectTimeoutException | java.net.ConnectException e) {
                if (attempt == maxRetries) {
                    throw giveUp(uri, e, attempt + 1);
                }
            } catch (HttpTimeoutException e) {  // connected, but no answer in time: it may be running, not resent
                throw new ApiConnectionException(uri + " did not answer within " + timeout.toMillis() + " ms", e);
            } catch (IOException e) {  // the connection dropped before any answer: the request did not run
                if (attempt == maxRetries) {
                    throw giveUp(uri, e, attempt + 1);
                }
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
                throw new ApiConnectionException("interrupted while waiting for " + uri, e);
            }
            if (response != null) {
                int status = response.statusCode();
                if (status < 400) {
                    return response;
                }
                String text = read(response, path);
                if (!RETRY_STATUS.contains(status) || attempt == maxRetries) {
                    throw Json.error(status, text, "HTTP " + status + " from " + path);
                }
            }
            sleep(delay(attempt, response));
        }
    }

    private static String read(HttpResponse<InputStream> response, String path) {
        try (InputStream in = response.body()) {
            return new String(in.readAllBytes(), StandardCharsets.UTF_8);
        } catch (IOException e) {
            throw new ApiConnectionException("the answer of " + path + " was cut: " + e.getMessage(), e);
        }
    }

    /** Exponential backoff with full jitter; at least the server's Retry-After (in seconds) when it sends one. */
    private long delay(int attempt, HttpResponse<?> response) {
        double cap = Math.min(maxBackoff.toMillis(), backoff.toMillis() * Math.pow(2, attempt));
        double delay = ThreadLocalRandom.current().nextDouble() * cap;
        double after = 0;
        if (response != null) {
            try {
                after = response.headers().firstValue("retry-after").map(Double::parseDouble).orElse(0.0) * 1000;
            } catch (NumberFormatException e) {  // an HTTP date: seekmoe does not send one; the backoff stands
                after = 0;
            }
        }
        return (long) Math.max(delay, Math.min(after, maxBackoff.toMillis() * 4.0));
    }

    private static void sleep(long millis) {
        try {
            Thread.sleep(millis);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new ApiConnectionException("interrupted while waiting to retry", e);
        }
    }

    private static ApiConnectionException giveUp(URI uri, IOException e, int attempts) {
        Throwable root = e.getMessage() == null && e.getCause() != null ? e.getCause() : e;
        String why = root.getMessage() != null ? root.getMessage()
            : root instanceof java.net.ConnectException ? "connection refused" : root.getClass().getSimpleName();
        return new ApiConnectionException("could not reach " + uri + ": " + why + " (" + attempts + " attempt"
                                          + (attempts > 1 ? "s" : "") + ")", e);
    }

    /** How a Client connects; every setting has a default. */
    public static final class Builder {
        private String baseUrl = "http://127.0.0.1:8000";
        private String apiKey;
        private Duration timeout = Duration.ofSeconds(600);
        private Duration connectTimeout = Duration.ofSeconds(10);
        private int maxRetries = 3;
        private Duration backoff = Duration.ofMillis(500);
        private Duration maxBackoff = Duration.ofSeconds(8);
        private int maxMediaBytes = Images.MAX_MEDIA_BYTES;

        private Builder() {
        }

        /** Where the server listens (default http://127.0.0.1:8000). */
        public Builder baseUrl(String baseUrl) {
            this.baseUrl = Json.required(baseUrl, "baseUrl");
            return this;
        }

        /** Sent as Authorization: Bearer KEY; null or empty: none. */
        public Builder apiKey(String apiKey) {
            this.apiKey = apiKey == null || apiKey.isEmpty() ? null : apiKey;
            return this;
        }

        /** How long to wait for an answer to begin (default 600 s); a stream's text may then take longer. */
        public Builder timeout(Duration timeout) {
            this.timeout = positive(timeout, "timeout");
            return this;
        }

        /** How long to wait for a connection (default 10 s). */
        public Builder connectTimeout(Duration connectTimeout) {
            this.connectTimeout = positive(connectTimeout, "connectTimeout");
            return this;
        }

        /** Retries of a 429, a 503 or a failed connection (default 3); 0: none. */
        public Builder maxRetries(int maxRetries) {
            if (maxRetries < 0) {
                throw new IllegalArgumentException("maxRetries must be >= 0, got " + maxRetries);
            }
            this.maxRetries = maxRetries;
            return this;
        }

        /** The first retry waits up to this (default 500 ms), each next one up to twice as long. */
        public Builder backoff(Duration backoff) {
            this.backoff = positive(backoff, "backoff");
            return this;
        }

        /** The longest backoff (default 8 s); a Retry-After is honoured up to four times this. */
        public Builder maxBackoff(Duration maxBackoff) {
            this.maxBackoff = positive(maxBackoff, "maxBackoff");
            return this;
        }

        /** The largest image sent (default 10 MiB, the server's); a bigger one is refused before any request. */
        public Builder maxMediaBytes(int maxMediaBytes) {
            if (maxMediaBytes < 1) {
                throw new IllegalArgumentException("maxMediaBytes must be >= 1, got " + maxMediaBytes);
            }
            this.maxMediaBytes = maxMediaBytes;
            return this;
        }

        public Client build() {
            return new Client(this);
        }

        private static Duration positive(Duration d, String name) {
            if (d == null || d.isNegative() || d.isZero()) {
                throw new IllegalArgumentException(name + " must be a positive duration, got " + d);
            }
            return d;
        }
    }
}
