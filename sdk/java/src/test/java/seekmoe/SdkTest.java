package seekmoe;

import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.time.Duration;
import java.util.Arrays;
import java.util.List;
import java.util.stream.Collectors;
import java.util.stream.Stream;

/**
 * The SDK against live servers, one scenario per public static method, named on the command line (all of them when
 * none is): tests/test_sdk_java.py starts the servers and passes them in the environment —
 * SEEKMOE_URL, SEEKMOE_KEY (a server with a small body limit), SEEKMOE_BUSY_URL (one sequence, one waiting),
 * SEEKMOE_CUT_URL (a fake that cuts its streams), SEEKMOE_DEAD_URL (nothing listens).
 * Prints "PASS name" or "FAIL name: why" per scenario; the exit status is the number failed.
 */
public final class SdkTest {
    private static final String URL = System.getenv("SEEKMOE_URL");
    private static final String KEY = System.getenv("SEEKMOE_KEY");

    private SdkTest() {
    }

    private static Client client() {
        return Client.builder().baseUrl(URL).apiKey(KEY).timeout(Duration.ofSeconds(120)).build();
    }

    private static GenerateRequest.Builder same(String prompt) {  // the same text, streamed or not
        return GenerateRequest.builder(prompt).maxTokens(8).temperature(0.9).seed(4).param("ignore_eos", true);
    }

    public static void generate() {
        Client client = client();
        Generation g = client.generate(same("The sea").build());
        check(g.id().startsWith("gen-") && g.finishReason().equals("length"), "a whole generation: " + g);
        check(g.usage().completionTokens() == 8 && g.usage().totalTokens() > 8, "its usage: " + g.usage());
        check(client.models().size() == 1, "one model: " + client.models());
    }

    public static void generateStream() {
        Client client = client();
        Generation whole = client.generate(same("The sea").build());
        List<Chunk> chunks;
        try (Stream<Chunk> s = client.generateStream(same("The sea").build())) {
            chunks = s.toList();
        }
        String text = chunks.stream().map(Chunk::text).collect(Collectors.joining());
        check(text.equals(whole.text()), "streamed '" + text + "' == whole '" + whole.text() + "'");
        Chunk last = chunks.get(chunks.size() - 1);
        check("length".equals(last.finishReason()) && last.usage().completionTokens() == 8, "the last: " + last);
    }

    public static void chatAndStream() {
        Client client = client();
        ChatRequest request = ChatRequest.builder().system("Be brief.").user("Hello").maxTokens(8).temperature(0.9)
            .seed(4).param("ignore_eos", true).build();
        ChatCompletion chat = client.chat(request);
        check(chat.id().startsWith("chatcmpl-") && chat.choices().size() == 1, "a chat answer: " + chat);
        check(chat.choices().get(0).message().role().equals("assistant") && chat.usage().completionTokens() == 8,
              "its choice and usage: " + chat);
        StringBuilder text = new StringBuilder();
        try (Stream<Chunk> s = client.chatStream(request)) {
            s.forEach(c -> text.append(c.text()));
        }
        check(text.toString().equals(chat.text()), "streamed '" + text + "' == whole '" + chat.text() + "'");
        ChatRequest withUsage = ChatRequest.builder().user("Hello").maxTokens(3).includeUsage().build();
        List<Chunk> chunks;
        try (Stream<Chunk> s = client.chatStream(withUsage)) {
            chunks = s.toList();
        }
        check(chunks.get(chunks.size() - 1).usage().completionTokens() == 3, "include_usage: " + chunks);
    }

    public static void leaveStreamEarly() {
        Client client = client();
        try (Stream<Chunk> s = client.generateStream(GenerateRequest.builder("x").maxTokens(100)
                                                                    .param("ignore_eos", true).build())) {
            check(s.limit(2).count() == 2, "two chunks of a long stream");
        }
        check(client.generate(GenerateRequest.builder("x").maxTokens(1).build()).usage().completionTokens() == 1,
              "the client works after a stream left early");
    }

    public static void summarizeAndExpertLoad() {
        Client client = client();
        Summary s = client.summarize(SummarizeRequest.builder(
            "The river rose overnight. The town closed the bridge. By noon the water fell and the bridge opened.")
            .maxLength(40).method("extractive").build());
        check(!s.summary().isBlank() && s.method().equals("extractive") && s.style().equals("bullets"),
              "a summary: " + s);
        List<LayerLoad> load = client.expertLoad();
        check(!load.isEmpty() && load.get(0).counts().stream().mapToLong(Long::longValue).sum() > 0,
              "the expert load counts the tokens routed so far: " + load);
    }

    public static void wrongKey() {
        for (String key : Arrays.asList("wrong", null)) {
            ApiException e = raises(() -> Client.builder().baseUrl(URL).apiKey(key).build()
                .generate(GenerateRequest.builder("x").build()));
            check(e.status() == 401 && e.code().orElse("").equals("invalid_api_key")
                  && e.type().orElse("").equals("authentication_error") && e.message().contains("Bearer"),
                  "401 with the server's fields, key " + key + ": " + e.getMessage());
        }
    }

    public static void badRequest() {
        Client client = Client.builder().baseUrl(URL).apiKey(KEY).backoff(Duration.ofSeconds(30)).build();
        long start = System.nanoTime();
        ApiException e = raises(() -> client.generate(GenerateRequest.builder("x").temperature(5).build()));
        check(e.status() == 400 && e.param().orElse("").equals("temperature") && e.message().contains("[0, 2]")
              && e.getMessage().startsWith("400 "), "400 naming temperature: " + e.getMessage());
        e = raises(() -> client.chat(ChatRequest.builder().build()));  // no messages
        check(e.status() == 400 && e.param().orElse("").equals("messages") && e.message().contains("at least 1"),
              "400 naming the empty messages: " + e.getMessage());
        e = raises(() -> client.chatStream(ChatRequest.builder().user("x").model("gpt-4").build()));
        check(e.status() == 404 && e.message().contains("gpt-4"), "404 for a model not served: " + e.getMessage());
        e = raises(() -> client.summarize(SummarizeRequest.builder("x").style("poem").build()));
        check(e.status() == 400 && e.param().orElse("").equals("style"), "400 naming style: " + e.getMessage());
        check(System.nanoTime() - start < 20e9, "refusals are not retried (a retry would wait up to 30 s)");
    }

    public static void tooLarge() {
        ApiException e = raises(() -> client().generate(GenerateRequest.builder("x".repeat(100_000)).build()));
        check(e.status() == 413 && e.code().orElse("").equals("request_too_large") && e.message().contains("limit"),
              "413 with its code: " + e.getMessage());
    }

    /** With both places of the busy server held: a 429 at once without retries, then success by retrying (the
     *  test frees the places once it has seen this client refused too). */
    public static void busyRetry() {
        String busy = System.getenv("SEEKMOE_BUSY_URL");
        GenerateRequest request = GenerateRequest.builder("x").maxTokens(2).build();
        ApiException e = raises(() -> Client.builder().baseUrl(busy).maxRetries(0).build().generate(request));
        check(e.status() == 429 && e.code().orElse("").equals("queue_full")
              && e.type().orElse("").equals("rate_limit_error"), "429 queue_full: " + e.getMessage());
        Client patient = Client.builder().baseUrl(busy).maxRetries(60).backoff(Duration.ofMillis(50)).build();
        check(patient.generate(request).usage().completionTokens() <= 2, "retried until a place freed");
    }

    public static void connectionRefused() {
        String dead = System.getenv("SEEKMOE_DEAD_URL");
        long start = System.nanoTime();
        ApiException e = raises(() -> Client.builder().baseUrl(dead).maxRetries(2).backoff(Duration.ofMillis(50))
            .build().generate(GenerateRequest.builder("x").build()));
        check(e instanceof ApiConnectionException && e.status() == ApiException.NO_STATUS
              && e.message().contains("3 attempts") && e.message().contains(dead), "refused: " + e.getMessage());
        check(System.nanoTime() - start < 30e9, "backoffs of 50 and 100 ms, not a hang");
        e = raises(() -> Client.builder().baseUrl(dead).maxRetries(0).build().chatStream(ChatRequest.of("x")));
        check(e instanceof ApiConnectionException && e.message().contains("1 attempt)"), "a stream: " + e.getMessage());
    }

    /** The fake server sends one event then drops the connection (chunked on generate, unframed on chat). */
    public static void streamCut() {
        Client client = Client.builder().baseUrl(System.getenv("SEEKMOE_CUT_URL")).maxRetries(3).build();
        for (boolean chat : new boolean[] {false, true}) {
            StringBuilder text = new StringBuilder();
            ApiException e = raises(() -> {
                try (Stream<Chunk> s = chat ? client.chatStream(ChatRequest.of("x"))
                                            : client.generateStream(GenerateRequest.builder("x").build())) {
                    s.forEach(c -> text.append(c.text()));
                }
            });
            check(text.toString().equals("Hel"), "the text before the cut came: '" + text + "'");
            check(e instanceof ApiConnectionException && e.message().contains("cut after 1 event"),
                  "a cut stream raises: " + e.getMessage());
        }
        ApiException e = raises(() -> client.generateStream(GenerateRequest.builder("error").build()).toList());
        check(e.status() == ApiException.NO_STATUS && e.code().orElse("").equals("engine_failed")
              && e.message().equals("the engine stopped"), "an error event in a stream: " + e.getMessage());
    }

    /** The fake answers "slow" after 4 s: the client gives up after its 1 s and does not resend. */
    public static void timeout() {
        Client client = Client.builder().baseUrl(System.getenv("SEEKMOE_CUT_URL")).timeout(Duration.ofSeconds(1))
            .build();
        long start = System.nanoTime();
        ApiException e = raises(() -> client.generate(GenerateRequest.builder("slow").build()));
        check(e instanceof ApiConnectionException && e.message().contains("did not answer within 1000 ms"),
              "a timeout: " + e.getMessage());
        check(System.nanoTime() - start < 3.5e9, "it gave up before the answer came");
    }

    public static void badOptions() {
        IllegalArgumentException e = raises(IllegalArgumentException.class, () -> Client.builder().maxRetries(-1));
        check(e.getMessage().contains("maxRetries must be >= 0, got -1"), e.getMessage());
        e = raises(IllegalArgumentException.class, () -> Client.builder().baseUrl("localhost:8000").build());
        check(e.getMessage().contains("http://HOST:PORT"), e.getMessage());
    }

    // ---- a small runner ----------------------------------------------------------------------------------------

    private static void check(boolean ok, String what) {
        if (!ok) {
            throw new AssertionError(what);
        }
    }

    private static ApiException raises(Runnable call) {
        return raises(ApiException.class, call);
    }

    private static <E extends Exception> E raises(Class<E> type, Runnable call) {
        try {
            call.run();
        } catch (Exception e) {
            if (type.isInstance(e)) {
                return type.cast(e);
            }
            throw new AssertionError("expected " + type.getSimpleName() + ", got " + e, e);
        }
        throw new AssertionError("expected " + type.getSimpleName() + ", nothing was thrown");
    }

    public static void main(String[] args) throws IllegalAccessException {
        List<Method> scenarios = Arrays.stream(SdkTest.class.getDeclaredMethods())
            .filter(m -> Modifier.isPublic(m.getModifiers()) && m.getParameterCount() == 0)
            .filter(m -> args.length == 0 || Arrays.asList(args).contains(m.getName())).toList();
        if (scenarios.size() != (args.length == 0 ? scenarios.size() : args.length)) {
            System.out.println("FAIL unknown scenario among " + Arrays.toString(args));
            System.exit(1);
        }
        int failed = 0;
        for (Method m : scenarios) {
            try {
                m.invoke(null);
                System.out.println("PASS " + m.getName());
            } catch (InvocationTargetException e) {
                failed++;
                System.out.println("FAIL " + m.getName() + ": " + e.getCause());
                e.getCause().printStackTrace(System.out);
            }
        }
        System.exit(failed);
    }
}
