package seekmoe;

/** The answer of /v2/summarize. */
public record Summary(String summary, int summaryTokens, String style, String method) {
}
