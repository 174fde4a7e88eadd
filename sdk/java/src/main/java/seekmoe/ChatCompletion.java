package seekmoe;

import java.util.List;

/** The answer of /v1/chat/completions: one choice per requested completion (n). */
public record ChatCompletion(String id, String model, long created, List<Choice> choices, Usage usage) {
    public record Choice(int index, Message message, String finishReason) {
    }

    /** The first choice's text. */
    public String text() {
        return choices.get(0).message().content();
    }
}
