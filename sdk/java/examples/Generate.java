import seekmoe.ApiException;
import seekmoe.Client;
import seekmoe.GenerateRequest;

/**
 * The README's request in Java: POST /v2/generate {"prompt", "max_tokens": 200, "temperature": 0.7}, then print
 * generated_text. SEEKMOE_BASE_URL (default http://127.0.0.1:8000) and SEEKMOE_API_KEY say where and how.
 * Exit status 1, with the server's message, when the request fails.
 */
public final class Generate {
    public static void main(String[] args) {
        Client client = Client.builder()
            .baseUrl(System.getenv().getOrDefault("SEEKMOE_BASE_URL", "http://127.0.0.1:8000"))
            .apiKey(System.getenv("SEEKMOE_API_KEY"))
            .build();
        String prompt = args.length > 0 ? String.join(" ", args) : "Call me Ishmael.";
        try {
            System.out.println(client.generate(
                GenerateRequest.builder(prompt).maxTokens(200).temperature(0.7).build()).text());
        } catch (ApiException e) {
            System.err.println("generate failed: " + e.getMessage());
            System.exit(1);
        }
    }
}
