// The client over libcurl: one easy handle per request (RAII below), the retry loop of the header's comment, and
// the server-sent events of a stream parsed as they arrive.
#include "seekmoe/client.hpp"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <thread>
#include <utility>

namespace seekmoe {

using nlohmann::json;

ApiError::ApiError(int status, std::string message, std::optional<std::string> type,
                   std::optional<std::string> param, std::optional<std::string> code)
    : std::runtime_error(status ? std::to_string(status) + " " + message : message),
      status_(status), message_(std::move(message)), type_(std::move(type)), param_(std::move(param)),
      code_(std::move(code)) {}

namespace {

constexpr const char* USER_AGENT = "seekmoe-cpp/0.1.0";

bool retry_status(long status) { return status == 429 || status == 503; }  // busy, or still loading the model

// ---- curl, owned ----------------------------------------------------------------------------------------------

void global_init() {
    // curl_global_init is not thread-safe before curl 7.84: once per process, before the first handle
    static const CURLcode code = curl_global_init(CURL_GLOBAL_DEFAULT);
    if (code != CURLE_OK) {
        throw ConnectionError(std::string("curl_global_init failed: ") + curl_easy_strerror(code));
    }
}

struct EasyDelete {
    void operator()(CURL* h) const { curl_easy_cleanup(h); }
};
struct SlistDelete {
    void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};
using Easy = std::unique_ptr<CURL, EasyDelete>;
using Headers = std::unique_ptr<curl_slist, SlistDelete>;

void append(Headers& headers, const std::string& line) {
    curl_slist* grown = curl_slist_append(headers.get(), line.c_str());
    if (grown == nullptr) {
        throw std::bad_alloc();
    }
    headers.release();
    headers.reset(grown);
}

// ---- JSON in and out ----------------------------------------------------------------------------------------

std::string clip(const std::string& text) { return text.size() <= 200 ? text : text.substr(0, 200) + "..."; }

std::optional<std::string> opt_string(const json& o, const char* name) {
    auto it = o.find(name);
    if (it == o.end() || it->is_null()) {
        return std::nullopt;
    }
    return it->is_string() ? it->get<std::string>() : it->dump();
}

const json& field(const json& o, const char* name) {
    auto it = o.find(name);
    if (it == o.end()) {
        throw ApiError(0, std::string("the answer has no field ") + name + ": " + clip(o.dump()));
    }
    return *it;
}

// ---- images -------------------------------------------------------------------------------------------------

constexpr char BASE64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string base64_encode(const std::string& data) {
    std::string out;
    out.reserve((data.size() + 2) / 3 * 4);
    for (std::size_t i = 0; i < data.size(); i += 3) {
        std::size_t n = std::min<std::size_t>(3, data.size() - i);
        std::uint32_t v = 0;
        for (std::size_t j = 0; j < 3; ++j) {
            v = v << 8 | (j < n ? static_cast<unsigned char>(data[i + j]) : 0u);
        }
        for (std::size_t j = 0; j < 4; ++j) {
            out += j <= n ? BASE64[v >> (18 - 6 * j) & 63] : '=';
        }
    }
    return out;
}

int sextet(char c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

// The bytes of padded base64 (RFC 4648), strictly: a length of 4n, the alphabet only, '=' only at the end.
std::string base64_decode(const std::string& text) {
    auto bad = [&](const std::string& why) {
        return ApiError(0, "an image of the answer is not base64 (" + why + "): " + clip(text));
    };
    if (text.size() % 4 != 0) {
        throw bad("its length " + std::to_string(text.size()) + " is not a multiple of 4");
    }
    std::string out;
    out.reserve(text.size() / 4 * 3);
    for (std::size_t i = 0; i < text.size(); i += 4) {
        std::uint32_t v = 0;
        int pad = 0;
        for (std::size_t j = 0; j < 4; ++j) {
            char c = text[i + j];
            bool last = i + 4 == text.size();
            if (c == '=' && last && (j == 3 || (j == 2 && text[i + 3] == '='))) {
                ++pad;
                v <<= 6;
                continue;
            }
            int s = sextet(c);
            if (s < 0) {
                unsigned char u = static_cast<unsigned char>(c);
                throw bad((std::isprint(u) ? "'" + std::string(1, c) + "'" : "byte " + std::to_string(u)) + " at " +
                          std::to_string(i + j));
            }
            v = v << 6 | static_cast<std::uint32_t>(s);
        }
        out += static_cast<char>(v >> 16 & 0xff);
        if (pad < 2) out += static_cast<char>(v >> 8 & 0xff);
        if (pad < 1) out += static_cast<char>(v & 0xff);
    }
    return out;
}

// The mime type of an image by its leading bytes (the formats the server reads); std::invalid_argument naming it.
std::string image_mime(const std::string& data, const std::string& what) {
    if (data.empty()) {
        throw std::invalid_argument(what + " is empty");
    }
    auto starts = [&](const char* magic, std::size_t n) { return data.compare(0, n, magic, n) == 0; };
    if (starts("\x89PNG\r\n\x1a\n", 8)) return "image/png";
    if (starts("\xff\xd8\xff", 3)) return "image/jpeg";
    if (starts("GIF87a", 6) || starts("GIF89a", 6)) return "image/gif";
    throw std::invalid_argument(what + " is not a PNG, JPEG or GIF image (unknown file type)");
}

std::string thousands(std::size_t n) {  // 10485760 -> 10,485,760, as the Python SDK writes limits
    std::string digits = std::to_string(n);
    for (int i = static_cast<int>(digits.size()) - 3; i > 0; i -= 3) {
        digits.insert(static_cast<std::size_t>(i), ",");
    }
    return digits;
}

std::string data_url(const std::string& image, const std::string& what, std::size_t max_bytes) {
    if (image.size() > max_bytes) {
        throw std::invalid_argument(what + " is " + thousands(image.size()) + " bytes; the limit is " +
                                    thousands(max_bytes) + " (max_media_bytes)");
    }
    return "data:" + image_mime(image, what) + ";base64," + base64_encode(image);
}

// The PNGs of an answer's images: /v2/generate's base64 strings or a chat message's image_url parts (data: URLs);
// none when the field is absent.
std::vector<std::string> images_of(const json& o, const char* name = "images") {
    std::vector<std::string> out;
    auto it = o.find(name);
    if (it == o.end() || it->is_null()) {
        return out;
    }
    for (const json& image : *it) {
        std::string data = image.is_string() ? image.get<std::string>()
                                             : field(field(image, "image_url"), "url").get<std::string>();
        if (data.rfind("data:", 0) == 0) {
            std::size_t start = data.find(";base64,");
            if (start == std::string::npos) {
                throw ApiError(0, "an image of the answer is a data: URL without ;base64,: " + clip(data));
            }
            data.erase(0, start + 8);
        }
        out.push_back(base64_decode(data));
    }
    return out;
}

// The error of a body in OpenAI's shape {"error": {...}}; `fallback` when it is not one.
ApiError error_of(int status, const std::string& text, const std::string& fallback) {
    json body = json::parse(text, nullptr, false);
    if (!body.is_object() || !body.contains("error") || !body["error"].is_object()) {
        return ApiError(status, text.empty() ? fallback : clip(text));
    }
    const json& e = body["error"];
    return ApiError(status, opt_string(e, "message").value_or(fallback), opt_string(e, "type"),
                    opt_string(e, "param"), opt_string(e, "code"));
}

std::optional<Usage> usage_of(const json& o) {
    auto it = o.find("usage");
    if (it == o.end() || it->is_null()) {
        return std::nullopt;
    }
    return Usage{field(*it, "prompt_tokens").get<int>(), field(*it, "completion_tokens").get<int>(),
                 field(*it, "total_tokens").get<int>()};
}

Usage usage_required(const json& o) {
    auto usage = usage_of(o);
    if (!usage) {
        throw ApiError(0, "the answer has no usage: " + clip(o.dump()));
    }
    return *usage;
}

// The chunks of one event of /v2/generate or /v1/chat/completions; an error event throws.
std::vector<Chunk> chunks_of(const json& o) {
    if (o.contains("error")) {
        throw error_of(0, o.dump(), "the stream failed");
    }
    std::string id = field(o, "id").get<std::string>();
    std::optional<Usage> usage = usage_of(o);
    if (!o.contains("choices")) {  // native
        return {Chunk{id, field(o, "text").get<std::string>(), 0, opt_string(o, "finish_reason"), usage,
                      images_of(o)}};
    }
    const json& choices = o["choices"];
    if (choices.empty()) {  // the usage chunk
        return {Chunk{id, "", 0, std::nullopt, usage, {}}};
    }
    std::vector<Chunk> out;
    for (const json& c : choices) {
        std::optional<std::string> text = c.contains("delta") ? opt_string(c["delta"], "content")
                                                              : opt_string(c, "text");
        out.push_back(Chunk{id, text.value_or(""), field(c, "index").get<int>(), opt_string(c, "finish_reason"),
                            usage, c.contains("delta") ? images_of(c["delta"]) : std::vector<std::string>{}});
    }
    return out;
}

void put(json& body, const char* name, const std::vector<std::string>& stop) {
    if (!stop.empty()) {
        body[name] = stop;
    }
}

template <typename T>
void put(json& body, const char* name, const std::optional<T>& value) {
    if (value) {
        body[name] = *value;
    }
}

json with_extra(json body, const json& extra) {
    if (!extra.is_null() && !extra.is_object()) {
        throw std::invalid_argument("extra must be a JSON object of fields, got " + extra.dump());
    }
    if (extra.is_object()) {
        body.update(extra);
    }
    return body;
}

json body_of(const GenerateRequest& r, std::size_t max_media_bytes) {
    json body = {{"prompt", r.prompt}};
    for (std::size_t i = 0; i < r.images.size(); ++i) {
        body["images"].push_back(data_url(r.images[i], "image " + std::to_string(i + 1) + " of the request",
                                          max_media_bytes));
    }
    put(body, "max_tokens", r.max_tokens);
    put(body, "temperature", r.temperature);
    put(body, "top_p", r.top_p);
    put(body, "stop", r.stop);
    put(body, "seed", r.seed);
    return with_extra(std::move(body), r.extra);
}

json body_of(const ChatRequest& r, std::size_t max_media_bytes) {
    json messages = json::array();
    for (std::size_t i = 0; i < r.messages.size(); ++i) {
        const Message& m = r.messages[i];
        if (m.images.empty()) {
            messages.push_back({{"role", m.role}, {"content", m.content}});
            continue;
        }
        json parts = json::array();  // OpenAI's: the images, then the text
        for (std::size_t j = 0; j < m.images.size(); ++j) {
            std::string what = "image " + std::to_string(j + 1) + " of message " + std::to_string(i + 1);
            parts.push_back({{"type", "image_url"}, {"image_url", {{"url", data_url(m.images[j], what,
                                                                                     max_media_bytes)}}}});
        }
        if (!m.content.empty()) {
            parts.push_back({{"type", "text"}, {"text", m.content}});
        }
        messages.push_back({{"role", m.role}, {"content", std::move(parts)}});
    }
    json body = {{"messages", std::move(messages)}};
    put(body, "model", r.model);
    put(body, "max_tokens", r.max_tokens);
    put(body, "temperature", r.temperature);
    put(body, "top_p", r.top_p);
    put(body, "n", r.n);
    put(body, "stop", r.stop);
    put(body, "seed", r.seed);
    if (r.include_usage) {
        body["stream_options"] = {{"include_usage", true}};
    }
    return with_extra(std::move(body), r.extra);
}

// ---- one request --------------------------------------------------------------------------------------------

// What a transfer's callbacks saw: the status and Retry-After, the body (whole, or an error's), and for a 2xx
// stream its events, handed on line by line.
struct Transfer {
    CURL* handle = nullptr;
    const ChunkHandler* on_chunk = nullptr;  // null: not a stream
    long status = 0;
    std::optional<double> retry_after;
    std::string body;  // a whole answer, or an error's
    std::string line;  // a stream's unfinished line
    int events = 0;
    bool done = false;  // data: [DONE] came
    std::chrono::milliseconds idle_limit{0};  // the client's timeout: the longest silence once connected
    std::chrono::steady_clock::time_point last_byte = std::chrono::steady_clock::now();
    curl_off_t bytes = 0;  // sent and received so far
    bool timed_out = false;
    std::exception_ptr error;  // thrown inside a callback: curl is C, it must not unwind through it

    bool streaming() const { return on_chunk != nullptr && status > 0 && status < 400; }

    void take_line() {
        if (!line.empty() && line.back() == '\r') {
            line.pop_back();
        }
        if (done || line.rfind("data:", 0) != 0) {
            line.clear();
            return;  // blank lines between events, comments, event names
        }
        std::string data = line.substr(line.size() > 5 && line[5] == ' ' ? 6 : 5);
        line.clear();
        if (data == "[DONE]") {
            done = true;
            return;
        }
        ++events;
        json event = json::parse(data, nullptr, false);
        if (!event.is_object()) {
            throw ApiError(0, "an event of the stream is not a JSON object: " + clip(data));
        }
        std::vector<Chunk> chunks;
        try {
            chunks = chunks_of(event);
        } catch (const json::exception& e) {
            throw ApiError(0, std::string("an event of the stream is not what seekmoe sends (") + e.what() +
                                  "): " + clip(data));
        }
        for (const Chunk& c : chunks) {
            (*on_chunk)(c);
        }
    }

    void feed(const char* data, size_t size) {
        for (size_t i = 0; i < size; ++i) {
            if (data[i] == '\n') {
                take_line();
            } else {
                line += data[i];
            }
        }
    }
};

size_t on_header(char* data, size_t size, size_t count, void* user) {
    auto* t = static_cast<Transfer*>(user);
    std::string header(data, size * count);
    if (header.rfind("HTTP/", 0) == 0) {
        t->retry_after.reset();  // a new answer (after a 100 Continue)
    }
    if (header == "\r\n" || header == "\n") {  // the end of the headers: the status is known
        curl_easy_getinfo(t->handle, CURLINFO_RESPONSE_CODE, &t->status);
        if (t->status < 200) {
            t->status = 0;  // 100 Continue: the answer is still to come
        }
    }
    std::string lower = header;
    std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
    if (lower.rfind("retry-after:", 0) == 0) {
        try {
            t->retry_after = std::stod(header.substr(12));
        } catch (const std::exception&) {  // an HTTP date: seekmoe does not send one; the backoff stands
        }
    }
    return size * count;
}

size_t on_body(char* data, size_t size, size_t count, void* user) {
    auto* t = static_cast<Transfer*>(user);
    try {
        if (t->streaming()) {
            t->feed(data, size * count);
        } else {
            t->body.append(data, size * count);
        }
        return size * count;
    } catch (...) {
        t->error = std::current_exception();
        return 0;  // curl stops the transfer and closes the connection
    }
}

// The timeout as a silence: no byte sent or received for idle_limit once connected. libcurl calls this about once
// a second when nothing moves, so a timeout fires up to a second late.
int on_progress(void* user, curl_off_t, curl_off_t received, curl_off_t, curl_off_t sent) {
    auto* t = static_cast<Transfer*>(user);
    auto now = std::chrono::steady_clock::now();
    curl_off_t connected = 0;
    curl_easy_getinfo(t->handle, CURLINFO_CONNECT_TIME_T, &connected);
    if (connected == 0 || received + sent != t->bytes) {
        t->bytes = received + sent;
        t->last_byte = now;
        return 0;
    }
    if (now - t->last_byte > t->idle_limit) {
        t->timed_out = true;
        return 1;  // curl stops with CURLE_ABORTED_BY_CALLBACK
    }
    return 0;
}

std::string plural(int n, const char* word) { return std::to_string(n) + " " + word + (n == 1 ? "" : "s"); }

bool retryable(CURLcode code) {
    switch (code) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_GOT_NOTHING:  // dropped before any answer: the request did not run, so it is safe to resend
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
        return true;
    case CURLE_OPERATION_TIMEDOUT:  // only connect_timeout sets a time limit on curl itself
        return true;
    default:
        return false;
    }
}

// Exponential backoff with full jitter; at least the server's Retry-After (in seconds) when it sends one.
std::chrono::milliseconds delay(const ClientOptions& o, int attempt, std::optional<double> retry_after) {
    thread_local std::mt19937_64 random{std::random_device{}()};
    double cap = std::min<double>(o.max_backoff.count(), o.backoff.count() * std::pow(2.0, attempt));
    double wait = std::uniform_real_distribution<double>(0.0, cap)(random);
    double after = std::min(retry_after.value_or(0.0) * 1000.0, o.max_backoff.count() * 4.0);
    return std::chrono::milliseconds(static_cast<long long>(std::max(wait, after)));
}

// The body of the answer to METHOD url, retried as the header says; a stream's events go to on_chunk instead.
std::string perform(const ClientOptions& o, const char* method, const std::string& url, const json* body,
                    const ChunkHandler* on_chunk) {
    global_init();
    std::string payload = body ? body->dump() : std::string();
    Headers headers;
    append(headers, "Accept: application/json, text/event-stream");
    append(headers, "Expect:");  // send the body at once, not after a 100 Continue
    if (body) {
        append(headers, "Content-Type: application/json");
    }
    if (!o.api_key.empty()) {
        append(headers, "Authorization: Bearer " + o.api_key);
    }
    for (int attempt = 0;; ++attempt) {
        Easy easy(curl_easy_init());
        if (!easy) {
            throw ConnectionError("curl_easy_init failed");
        }
        CURL* h = easy.get();
        Transfer t;
        t.handle = h;
        t.on_chunk = on_chunk;
        t.idle_limit = o.timeout;
        char reason[CURL_ERROR_SIZE] = "";
        curl_easy_setopt(h, CURLOPT_URL, url.c_str());
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
        if (body) {
            curl_easy_setopt(h, CURLOPT_POSTFIELDS, payload.c_str());
            curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(payload.size()));
        }
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers.get());
        curl_easy_setopt(h, CURLOPT_USERAGENT, USER_AGENT);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);  // no SIGALRM for timeouts: safe in threads
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(o.connect_timeout.count()));
        curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
        curl_easy_setopt(h, CURLOPT_XFERINFODATA, &t);
        curl_easy_setopt(h, CURLOPT_ERRORBUFFER, reason);
        curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(h, CURLOPT_HEADERDATA, &t);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &t);

        CURLcode code = curl_easy_perform(h);
        if (t.error) {
            std::rethrow_exception(t.error);
        }
        std::string why = t.timed_out ? "nothing came for " + std::to_string(o.timeout.count()) + " ms"
                          : reason[0] ? reason : curl_easy_strerror(code);
        if (t.streaming()) {
            if (code == CURLE_OK && !t.line.empty()) {
                t.take_line();  // the last line had no newline
            }
            if (code != CURLE_OK || !t.done) {
                throw ConnectionError("the stream from " + url + " was cut after " + plural(t.events, "event") +
                                      (code != CURLE_OK ? ": " + why : ", before data: [DONE]"));
            }
            return {};
        }
        if (code == CURLE_OK) {
            curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &t.status);
            if (t.status < 400) {
                return std::move(t.body);
            }
            if (!retry_status(t.status) || attempt == o.max_retries) {
                throw error_of(static_cast<int>(t.status), t.body, "HTTP " + std::to_string(t.status));
            }
        } else if (t.timed_out && t.status == 0) {  // connected, but no answer in time: it may be running
            throw ConnectionError(url + " did not answer within " + std::to_string(o.timeout.count()) + " ms");
        } else if (t.status != 0) {  // the answer began: the request ran, it is not resent
            throw ConnectionError("the answer of " + url + " was cut: " + why);
        } else if (!retryable(code) || attempt == o.max_retries) {
            throw ConnectionError("could not reach " + url + ": " + why + " (" + plural(attempt + 1, "attempt") +
                                  ")");
        }
        std::this_thread::sleep_for(delay(o, attempt, t.retry_after));
    }
}

json parse_object(const std::string& text, const std::string& path) {
    json o = json::parse(text, nullptr, false);
    if (!o.is_object()) {
        throw ApiError(0, "the answer of " + path + " is not a JSON object: " + clip(text));
    }
    return o;
}

}  // namespace

std::string read_image(const std::string& path, std::size_t max_bytes) {
    std::error_code error;
    auto status = std::filesystem::status(path, error);
    if (status.type() == std::filesystem::file_type::not_found) {
        throw std::invalid_argument("image file " + path + " does not exist");
    }
    if (status.type() == std::filesystem::file_type::directory) {
        throw std::invalid_argument("image file " + path + " is a directory, not a file");
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        throw std::invalid_argument("cannot read image file " + path + ": " + std::strerror(errno));
    }
    std::string data;
    char block[1 << 16];
    while (data.size() <= max_bytes && in) {  // never past the limit: a huge file (or a device) is refused unread
        in.read(block, sizeof block);
        data.append(block, static_cast<std::size_t>(in.gcount()));
    }
    if (in.bad()) {
        throw std::invalid_argument("cannot read image file " + path + ": " + std::strerror(errno));
    }
    if (data.size() > max_bytes) {
        throw std::invalid_argument("image file " + path + " is over the " + thousands(max_bytes) + "-byte limit");
    }
    image_mime(data, "image file " + path);
    return data;
}

// ---- the client ---------------------------------------------------------------------------------------------

Client::Client(ClientOptions options) : options_(std::move(options)) {
    while (!options_.base_url.empty() && options_.base_url.back() == '/') {
        options_.base_url.pop_back();
    }
    if (options_.base_url.rfind("http://", 0) != 0 && options_.base_url.rfind("https://", 0) != 0) {
        throw std::invalid_argument("base_url must be http://HOST:PORT or https://..., got '" + options_.base_url +
                                    "'");
    }
    if (options_.max_media_bytes < 1) {
        throw std::invalid_argument("max_media_bytes must be >= 1, got 0");
    }
    if (options_.max_retries < 0) {
        throw std::invalid_argument("max_retries must be >= 0, got " + std::to_string(options_.max_retries));
    }
    for (auto [name, value] : {std::pair{"timeout", options_.timeout}, {"connect_timeout", options_.connect_timeout},
                               {"backoff", options_.backoff}, {"max_backoff", options_.max_backoff}}) {
        if (value.count() <= 0) {
            throw std::invalid_argument(std::string(name) + " must be > 0 ms, got " + std::to_string(value.count()));
        }
    }
    global_init();
}

json Client::send_json(const char* method, const std::string& path, const json* body) const {
    return parse_object(perform(options_, method, options_.base_url + path, body, nullptr), path);
}

// The result `read` makes of the answer of `path`; an answer of another shape: ApiError naming what is wrong.
template <typename Read>
auto decode(const std::string& path, Read read) -> decltype(read()) {
    try {
        return read();
    } catch (const json::exception& e) {
        throw ApiError(0, "the answer of " + path + " is not what seekmoe sends: " + e.what());
    }
}

void Client::send_stream(const std::string& path, json body, const ChunkHandler& on_chunk) const {
    if (!on_chunk) {
        throw std::invalid_argument("a stream needs a chunk handler, got an empty std::function");
    }
    body["stream"] = true;
    perform(options_, "POST", options_.base_url + path, &body, &on_chunk);
}

Generation Client::generate(const GenerateRequest& request) const {
    json body = body_of(request, options_.max_media_bytes);
    json o = send_json("POST", "/v2/generate", &body);
    return decode("/v2/generate", [&] {
        return Generation{field(o, "id").get<std::string>(), field(o, "generated_text").get<std::string>(),
                          opt_string(o, "finish_reason"), usage_required(o), images_of(o)};
    });
}

void Client::generate_stream(const GenerateRequest& request, const ChunkHandler& on_chunk) const {
    send_stream("/v2/generate", body_of(request, options_.max_media_bytes), on_chunk);
}

ChatCompletion Client::chat(const ChatRequest& request) const {
    json body = body_of(request, options_.max_media_bytes);
    json o = send_json("POST", "/v1/chat/completions", &body);
    return decode("/v1/chat/completions", [&] {
        ChatCompletion out{field(o, "id").get<std::string>(), field(o, "model").get<std::string>(),
                           field(o, "created").get<std::int64_t>(), {}, usage_required(o)};
        for (const json& c : field(o, "choices")) {
            const json& m = field(c, "message");
            Message message{field(m, "role").get<std::string>(),
                            opt_string(m, "content").value_or(""),  // null: an answer of tool calls only
                            images_of(m)};
            out.choices.push_back(ChatChoice{field(c, "index").get<int>(), std::move(message),
                                             opt_string(c, "finish_reason")});
        }
        return out;
    });
}

void Client::chat_stream(const ChatRequest& request, const ChunkHandler& on_chunk) const {
    send_stream("/v1/chat/completions", body_of(request, options_.max_media_bytes), on_chunk);
}

Summary Client::summarize(const SummarizeRequest& request) const {
    json body = {{"text", request.text}};
    put(body, "max_length", request.max_length);
    put(body, "style", request.style);
    put(body, "method", request.method);
    json o = send_json("POST", "/v2/summarize", &body);
    return decode("/v2/summarize", [&] {
        return Summary{field(o, "summary").get<std::string>(), field(o, "summary_tokens").get<int>(),
                       field(o, "style").get<std::string>(), field(o, "method").get<std::string>()};
    });
}

std::vector<LayerLoad> Client::expert_load() const {
    json o = send_json("GET", "/v2/expert_load", nullptr);
    return decode("/v2/expert_load", [&] {
        std::vector<LayerLoad> out;
        for (const json& l : field(o, "layers")) {
            out.push_back(LayerLoad{field(l, "layer").get<int>(),
                                    field(l, "counts").get<std::vector<std::int64_t>>()});
        }
        return out;
    });
}

std::vector<std::string> Client::models() const {
    json o = send_json("GET", "/v1/models", nullptr);
    return decode("/v1/models", [&] {
        std::vector<std::string> out;
        for (const json& m : field(o, "data")) {
            out.push_back(field(m, "id").get<std::string>());
        }
        return out;
    });
}

}  // namespace seekmoe
