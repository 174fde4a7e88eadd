package seekmoe;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.Arrays;
import java.util.List;
import java.util.stream.Collectors;
import java.util.stream.Stream;

/**
 * The SDK against live servers, one scenario per public static method, named on the command line (all of them when
 * none is): tests/test_sdk_java.py starts the servers and passes them in the environment —
 * SEEKMOE_URL, SEEKMOE_KEY (a server with a small body limit), SEEKMOE_BUSY_URL (one sequence, one waiting),
 * SEEKMOE_CUT_URL (a fake that cuts its streams), SEEKMOE_DEAD_URL (nothing listens); for the image scenarios
 * SEEKMOE_GROUNDED_URL (a server that answers SEEKMOE_QUESTION about the picture SEEKMOE_PICTURE with SEEKMOE_ANSWER,
 * a region), SEEKMOE_ANSWER_GRAMMAR (forces that answer) and SEEKMOE_OUT (where the annotated PNGs go).
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
        client.generate(GenerateRequest.builder("x").maxTokens(1).build());  // routes tokens even run alone
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

    // ---- images ------------------------------------------------------------------------------------------------

    private static Client grounded() {
        return Client.builder().baseUrl(System.getenv("SEEKMOE_GROUNDED_URL")).apiKey(KEY)
            .timeout(Duration.ofSeconds(120)).build();
    }

    private static Path picture() {
        return Path.of(System.getenv("SEEKMOE_PICTURE"));
    }

    private static byte[] pictureBytes() {
        try {
            return Files.readAllBytes(picture());
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    private static String question() {
        return System.getenv("SEEKMOE_QUESTION");
    }

    private static String answer() {
        return System.getenv("SEEKMOE_ANSWER");
    }

    private static boolean isPng(byte[] data) {
        byte[] magic = {(byte) 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
        return data.length > magic.length && Arrays.equals(Arrays.copyOf(data, magic.length), magic);
    }

    private static void save(String name, byte[] png) {
        try {
            Files.write(Path.of(System.getenv("SEEKMOE_OUT"), name), png);
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
    }

    /** The picture, as a file and as bytes, to /v2/generate and to chat: the model's answer about it. */
    public static void imageIn() {
        Client client = grounded();
        Generation g = client.generate(GenerateRequest.builder(question()).image(picture()).maxTokens(80)
                                       .temperature(0).build());
        check(g.text().equals(answer()), "generate with the picture's file: " + g.text());
        ChatCompletion chat = client.chat(ChatRequest.builder().user(question(), pictureBytes()).maxTokens(80)
                                          .temperature(0).build());
        check(chat.text().equals(answer()), "chat with the picture's bytes: " + chat.text());
        chat = client.chat(ChatRequest.builder().message(Message.user(question(), pictureBytes())).maxTokens(80)
                           .temperature(0).build());
        check(chat.text().equals(answer()), "chat with a Message of the picture: " + chat.text());
    }

    /** An answer naming a region of the picture brings it annotated: the same PNG from generate and chat. */
    public static void annotatedImages() {
        Client client = grounded();
        Generation g = client.generate(GenerateRequest.builder(question()).image(pictureBytes()).maxTokens(80)
                                       .temperature(0).build());
        check(g.images().size() == 1 && isPng(g.images().get(0)), "generate: one PNG, got " + g.images().size());
        Message m = client.chat(ChatRequest.builder().user(question(), picture()).maxTokens(80).temperature(0)
                                .build()).choices().get(0).message();
        check(m.content().equals(answer()) && m.images().size() == 1
              && Arrays.equals(m.images().get(0), g.images().get(0)), "chat: the same PNG as generate");
        save("generate.png", g.images().get(0));
        save("chat.png", m.images().get(0));
    }

    /** No image in the request, no image in the answer, even one naming a region (forced by a grammar). */
    public static void noImages() {
        Client client = grounded();
        Generation g = client.generate(GenerateRequest.builder("Where?").maxTokens(80)
                                       .param("grammar", System.getenv("SEEKMOE_ANSWER_GRAMMAR")).build());
        check(g.text().equals(answer()) && g.images().isEmpty(), "a region without an image: " + g);
        ChatCompletion chat = client.chat(ChatRequest.builder().user(question()).maxTokens(20).temperature(0).build());
        check(chat.choices().get(0).message().images().isEmpty(), "a chat without an image: " + chat);
        try (Stream<Chunk> s = client.chatStream(ChatRequest.builder().user(question()).maxTokens(20).build())) {
            check(s.allMatch(c -> c.images().isEmpty()), "a stream without an image");
        }
    }

    /** Refused before any request (the client points at a dead port), each naming what is wrong. */
    public static void imageErrors() {
        Path missing = picture().resolveSibling("missing.png");
        IllegalArgumentException e = raises(IllegalArgumentException.class,
                                            () -> GenerateRequest.builder("x").image(missing));
        check(e.getMessage().equals("image file " + missing + " does not exist"), e.getMessage());
        e = raises(IllegalArgumentException.class, () -> ChatRequest.builder().user("x", missing));
        check(e.getMessage().equals("image file " + missing + " does not exist"), e.getMessage());
        e = raises(IllegalArgumentException.class, () -> Images.read(picture().getParent()));
        check(e.getMessage().endsWith("is a directory, not a file"), e.getMessage());
        e = raises(IllegalArgumentException.class, () -> Images.read(picture(), 100));
        check(e.getMessage().equals("image file " + picture() + " is over the 100-byte limit"), e.getMessage());
        Client small = Client.builder().baseUrl(System.getenv("SEEKMOE_DEAD_URL")).maxRetries(0).maxMediaBytes(100)
            .build();
        byte[] png = pictureBytes();
        String over = String.format(" is %,d bytes; the limit is 100 (maxMediaBytes)", png.length);
        e = raises(IllegalArgumentException.class,
                   () -> small.generate(GenerateRequest.builder("x").image(png).build()));
        check(e.getMessage().equals("image 1 of the request" + over), e.getMessage());
        e = raises(IllegalArgumentException.class,
                   () -> small.chatStream(ChatRequest.builder().user("hi").user("x", png).build()));
        check(e.getMessage().equals("image 1 of message 2" + over), e.getMessage());
        e = raises(IllegalArgumentException.class, () -> small.generate(
            GenerateRequest.builder("x").image("not a picture".getBytes(StandardCharsets.UTF_8)).build()));
        check(e.getMessage().equals("image 1 of the request is not a PNG, JPEG or GIF image (unknown file type)"),
              e.getMessage());
        e = raises(IllegalArgumentException.class, () -> Client.builder().maxMediaBytes(0));
        check(e.getMessage().equals("maxMediaBytes must be >= 1, got 0"), e.getMessage());
        ApiException bad = raises(() -> Client.builder().baseUrl(System.getenv("SEEKMOE_CUT_URL")).build()
            .generate(GenerateRequest.builder("bad image").build()));
        check(bad.status() == ApiException.NO_STATUS && bad.message().contains("is not base64"),
              "an answer's image that is not base64: " + bad.getMessage());
    }

    /** A streamed answer naming a region brings the annotated PNG on its finishing chunk, and only there. */
    public static void streamImages() {
        Client client = grounded();
        List<Chunk> chunks;
        try (Stream<Chunk> s = client.chatStream(ChatRequest.builder().user(question(), pictureBytes()).maxTokens(80)
                                                 .temperature(0).build())) {
            chunks = s.toList();
        }
        String text = chunks.stream().map(Chunk::text).collect(Collectors.joining());
        check(text.equals(answer()), "the streamed answer: " + text);
        Chunk last = chunks.get(chunks.size() - 1);
        check("stop".equals(last.finishReason()) && last.images().size() == 1 && isPng(last.images().get(0))
              && chunks.stream().filter(c -> !c.images().isEmpty()).count() == 1, "chat: the finishing chunk's");
        List<Chunk> generated;
        try (Stream<Chunk> s = client.generateStream(GenerateRequest.builder(question()).image(picture())
                                                     .maxTokens(80).temperature(0).build())) {
            generated = s.toList();
        }
        Chunk end = generated.get(generated.size() - 1);
        check(end.images().size() == 1 && Arrays.equals(end.images().get(0), last.images().get(0))
              && generated.stream().filter(c -> !c.images().isEmpty()).count() == 1, "generate: the last chunk's");
        save("chat-stream.png", last.images().get(0));
        save("generate-stream.png", end.images().get(0));
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
