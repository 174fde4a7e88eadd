// A C++ client for `seekmoe serve`: the native /v2 API (generate, summarize, the expert load) and OpenAI's chat.
//
//     seekmoe::ClientOptions options;
//     options.base_url = "http://127.0.0.1:8000";
//     options.api_key = "KEY";
//     seekmoe::Client client(options);
//     seekmoe::GenerateRequest request("Call me Ishmael.");
//     request.max_tokens = 50;
//     std::cout << client.generate(request).text << "\n";
//     client.chat_stream(seekmoe::ChatRequest::user("Tell me a story."),
//                        [](const seekmoe::Chunk& c) { std::cout << c.text << std::flush; });
//
// Images: GenerateRequest::images and Message::images take PNG, JPEG or GIF bytes (read_image reads a file), at
// most ClientOptions::max_media_bytes each; a message's go as OpenAI's image_url parts before its text. An answer
// that names regions of the request's last image (<|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2]]<|/det|>) brings
// that image with them drawn, as PNG bytes: `images` of the Generation, the reply's Message and the Chunk that
// finishes it (empty otherwise).
//
// Refusals throw seekmoe::ApiError with the server's status, message, type, param and code; a server that cannot
// be reached throws seekmoe::ConnectionError (an ApiError without a status).
//
// Retries: 429 (after its Retry-After), 503 and failed connections are retried up to max_retries times with
// exponential backoff and full jitter; other errors are not, and neither is a stream once its answer has begun.
// A Client is safe to share between threads: each request runs on its own curl handle.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace seekmoe {

// ---- errors -------------------------------------------------------------------------------------------------

// The server refused or failed a request, with the fields of its {"error": {...}} body. status() is the HTTP
// status, or 0 when there was no HTTP answer: the connection failed (ConnectionError) or the error came inside a
// stream that had already started. what() is "STATUS message"; message() the server's words alone.
class ApiError : public std::runtime_error {
public:
    ApiError(int status, std::string message, std::optional<std::string> type = std::nullopt,
             std::optional<std::string> param = std::nullopt, std::optional<std::string> code = std::nullopt);

    int status() const noexcept { return status_; }
    const std::string& message() const noexcept { return message_; }
    // OpenAI's error type: invalid_request_error, authentication_error, rate_limit_error, server_error...
    const std::optional<std::string>& type() const noexcept { return type_; }
    // the request field at fault (temperature, messages...), when the server names one
    const std::optional<std::string>& param() const noexcept { return param_; }
    // invalid_api_key, queue_full, request_too_large..., when the server gives one
    const std::optional<std::string>& code() const noexcept { return code_; }

private:
    int status_;
    std::string message_;
    std::optional<std::string> type_, param_, code_;
};

// No answer came: the server could not be reached after every retry, it did not answer within the timeout, or a
// stream was cut before its end.
class ConnectionError : public ApiError {
public:
    explicit ConnectionError(std::string message) : ApiError(0, std::move(message)) {}
};

// ---- images -------------------------------------------------------------------------------------------------

constexpr std::size_t MAX_MEDIA_BYTES = 10 << 20;  // the server's default limit on one image, and the client's

// The bytes of a PNG, JPEG or GIF file; std::invalid_argument naming the file when it is missing, a directory,
// unreadable, empty, over max_bytes (it is not read past them) or not such an image.
std::string read_image(const std::string& path, std::size_t max_bytes = MAX_MEDIA_BYTES);

// ---- requests -----------------------------------------------------------------------------------------------
// Fields left empty get the server's defaults; `extra` sends any other field it knows (top_k, min_p, ignore_eos...).

struct GenerateRequest {  // POST /v2/generate: the prompt continued as it is, without a chat template
    explicit GenerateRequest(std::string prompt) : prompt(std::move(prompt)) {}

    std::string prompt;
    std::optional<int> max_tokens;
    std::optional<double> temperature;
    std::optional<double> top_p;
    std::vector<std::string> stop;  // end where the text holds one of these (not returned)
    std::optional<std::int64_t> seed;
    // PNG, JPEG or GIF bytes shown before the prompt, which becomes their question in one user turn
    std::vector<std::string> images;
    nlohmann::json extra = nlohmann::json::object();
};

struct Message {
    Message() = default;
    Message(std::string role, std::string content, std::vector<std::string> images = {})
        : role(std::move(role)), content(std::move(content)), images(std::move(images)) {}

    std::string role;  // system, user or assistant
    std::string content;
    // a request's: PNG, JPEG or GIF bytes shown before the text; an answer's: the request's last image with the
    // regions it names drawn, PNG bytes
    std::vector<std::string> images;
};

struct ChatRequest {  // POST /v1/chat/completions: the messages, under the model's chat template
    ChatRequest() = default;
    explicit ChatRequest(std::vector<Message> messages) : messages(std::move(messages)) {}
    static ChatRequest user(std::string content) { return ChatRequest({{"user", std::move(content)}}); }

    std::vector<Message> messages;
    std::optional<std::string> model;  // the served model's name; empty: the server's model answers
    std::optional<int> max_tokens;
    std::optional<double> temperature;
    std::optional<double> top_p;
    std::optional<int> n;  // completions to write (choices)
    std::vector<std::string> stop;
    std::optional<std::int64_t> seed;
    bool include_usage = false;  // a stream ends with a chunk of the usage and no text
    nlohmann::json extra = nlohmann::json::object();
};

struct SummarizeRequest {  // POST /v2/summarize: a document of any length
    explicit SummarizeRequest(std::string text) : text(std::move(text)) {}

    std::string text;
    std::optional<int> max_length;     // the most tokens in the summary (200)
    std::optional<std::string> style;  // bullets (default), paragraph, sections
    std::optional<std::string> method;  // hybrid (default), abstractive, extractive
};

// ---- results ------------------------------------------------------------------------------------------------

struct Usage {
    int prompt_tokens = 0;
    int completion_tokens = 0;
    int total_tokens = 0;
};

struct Generation {
    std::string id;
    std::string text;  // generated_text
    std::optional<std::string> finish_reason;  // "length", "stop"
    Usage usage;
    std::vector<std::string> images;  // PNG bytes: the request's last image with the regions the text names drawn
};

struct ChatChoice {
    int index = 0;
    Message message;
    std::optional<std::string> finish_reason;
};

struct ChatCompletion {
    std::string id;
    std::string model;
    std::int64_t created = 0;
    std::vector<ChatChoice> choices;
    Usage usage;

    const std::string& text() const { return choices.at(0).message.content; }  // the first choice's
};

// One streamed piece: the new text of choice `index`; finish_reason on its last piece; usage on the last chunk of
// a /v2/generate stream, or of a chat stream with include_usage (then the text is empty); images (PNG bytes) on
// the piece that finishes an answer naming regions of the request's last image.
struct Chunk {
    std::string id;
    std::string text;
    int index = 0;
    std::optional<std::string> finish_reason;
    std::optional<Usage> usage;
    std::vector<std::string> images;
};

struct Summary {
    std::string summary;
    int summary_tokens = 0;
    std::string style;
    std::string method;
};

struct LayerLoad {  // tokens routed to each routed expert of one MoE layer since the server started
    int layer = 0;
    std::vector<std::int64_t> counts;
};

// Called with each chunk as it arrives. An exception it throws ends the stream (the connection is closed, so the
// server stops writing) and comes out of the *_stream call.
using ChunkHandler = std::function<void(const Chunk&)>;

// ---- the client ---------------------------------------------------------------------------------------------

struct ClientOptions {
    std::string base_url = "http://127.0.0.1:8000";
    std::string api_key;  // sent as Authorization: Bearer KEY; empty: none
    // the longest silence once connected: for an answer to begin, or between a stream's events (to about a second)
    std::chrono::milliseconds timeout{600'000};
    std::chrono::milliseconds connect_timeout{10'000};
    int max_retries = 3;  // of a 429, a 503 or a failed connection
    std::chrono::milliseconds backoff{500};  // the first retry waits up to this, each next one up to twice as long
    std::chrono::milliseconds max_backoff{8'000};  // and never longer; a Retry-After is honoured up to 4x this
    std::size_t max_media_bytes = MAX_MEDIA_BYTES;  // the largest image sent; a bigger one is refused unsent
};

class Client {
public:
    explicit Client(ClientOptions options = {});

    Generation generate(const GenerateRequest& request) const;
    void generate_stream(const GenerateRequest& request, const ChunkHandler& on_chunk) const;
    ChatCompletion chat(const ChatRequest& request) const;
    void chat_stream(const ChatRequest& request, const ChunkHandler& on_chunk) const;
    Summary summarize(const SummarizeRequest& request) const;
    std::vector<LayerLoad> expert_load() const;  // with admin keys set, it needs one
    std::vector<std::string> models() const;

    const ClientOptions& options() const noexcept { return options_; }

private:
    nlohmann::json send_json(const char* method, const std::string& path, const nlohmann::json* body) const;
    void send_stream(const std::string& path, nlohmann::json body, const ChunkHandler& on_chunk) const;

    ClientOptions options_;
};

}  // namespace seekmoe
