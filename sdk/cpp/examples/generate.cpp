// The README's request in C++: POST /v2/generate {"prompt", "max_tokens": 200, "temperature": 0.7}, then print
// generated_text. SEEKMOE_BASE_URL (default http://127.0.0.1:8000) and SEEKMOE_API_KEY say where and how.
// Exit status 1, with the server's message, when the request fails.
#include <seekmoe/client.hpp>

#include <cstdlib>
#include <iostream>

int main(int argc, char** argv) {
    seekmoe::ClientOptions options;
    if (const char* url = std::getenv("SEEKMOE_BASE_URL")) {
        options.base_url = url;
    }
    if (const char* key = std::getenv("SEEKMOE_API_KEY")) {
        options.api_key = key;
    }
    try {
        seekmoe::Client client(options);
        seekmoe::GenerateRequest request(argc > 1 ? argv[1] : "Call me Ishmael.");
        request.max_tokens = 200;
        request.temperature = 0.7;
        std::cout << client.generate(request).text << "\n";
    } catch (const seekmoe::ApiError& e) {
        std::cerr << "generate failed: " << e.what() << "\n";
        return 1;
    } catch (const std::invalid_argument& e) {
        std::cerr << "generate: " << e.what() << "\n";
        return 2;
    }
}
