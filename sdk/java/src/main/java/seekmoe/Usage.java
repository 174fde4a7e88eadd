package seekmoe;

/** Tokens of the prompt and of the answer. */
public record Usage(int promptTokens, int completionTokens, int totalTokens) {
}
