// The SDK against live servers, one scenario per function, named on the command line (all when none is):
// tests/test_sdk_cpp.py starts the servers and passes them in the environment — SEEKMOE_URL, SEEKMOE_KEY (a server
// with a small body limit), SEEKMOE_BUSY_URL (one sequence, one waiting), SEEKMOE_CUT_URL (a fake that cuts its
// streams), SEEKMOE_DEAD_URL (nothing listens); for the image scenarios SEEKMOE_GROUNDED_URL (a server that answers
// SEEKMOE_QUESTION about the picture SEEKMOE_PICTURE with SEEKMOE_ANSWER, a region), SEEKMOE_ANSWER_GRAMMAR (forces
// that answer) and SEEKMOE_OUT (where the annotated PNGs go). Prints "PASS name" or "FAIL name: why" per scenario;
// the exit status is the number failed.
#include <seekmoe/client.hpp>

#include <chrono>
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <map>
#include <numeric>
#include <string>
#include <vector>

using namespace seekmoe;
using Clock = std::chrono::steady_clock;

namespace {

struct Failure {
    std::string what;
};

void check(bool ok, const std::string& what) {
    if (!ok) {
        throw Failure{what};
    }
}

template <typename E = ApiError, typename F>
E raises(F call) {
    try {
        call();
    } catch (const E& e) {
        return e;
    }
    throw Failure{"nothing was thrown"};
}

std::string env(const char* name) {
    const char* value = std::getenv(name);
    if (value == nullptr) {
        throw Failure{std::string("the test needs ") + name + " in the environment"};
    }
    return value;
}

Client client(std::string url = env("SEEKMOE_URL"), std::string key = env("SEEKMOE_KEY")) {
    ClientOptions o;
    o.base_url = std::move(url);
    o.api_key = std::move(key);
    o.timeout = std::chrono::seconds(120);
    return Client(o);
}

GenerateRequest same(const std::string& prompt) {  // the same text, streamed or not
    GenerateRequest r(prompt);
    r.max_tokens = 8;
    r.temperature = 0.9;
    r.seed = 4;
    r.extra["ignore_eos"] = true;
    return r;
}

void generate() {
    Client c = client();
    Generation g = c.generate(same("The sea"));
    check(g.id.rfind("gen-", 0) == 0 && g.finish_reason == "length", "a whole generation: " + g.id);
    check(g.usage.completion_tokens == 8 && g.usage.total_tokens > 8, "its usage");
    check(c.models().size() == 1, "one model");
}

void generate_stream() {
    Client c = client();
    Generation whole = c.generate(same("The sea"));
    std::vector<Chunk> chunks;
    c.generate_stream(same("The sea"), [&](const Chunk& chunk) { chunks.push_back(chunk); });
    std::string text;
    for (const Chunk& chunk : chunks) {
        text += chunk.text;
    }
    check(text == whole.text, "streamed '" + text + "' == whole '" + whole.text + "'");
    check(chunks.back().finish_reason == "length" && chunks.back().usage &&
              chunks.back().usage->completion_tokens == 8, "the last chunk has the finish reason and usage");
}

void chat_and_stream() {
    Client c = client();
    ChatRequest r({{"system", "Be brief."}, {"user", "Hello"}});
    r.max_tokens = 8;
    r.temperature = 0.9;
    r.seed = 4;
    r.extra["ignore_eos"] = true;
    ChatCompletion chat = c.chat(r);
    check(chat.id.rfind("chatcmpl-", 0) == 0 && chat.choices.size() == 1, "a chat answer: " + chat.id);
    check(chat.choices[0].message.role == "assistant" && chat.usage.completion_tokens == 8, "its choice and usage");
    std::string text;
    c.chat_stream(r, [&](const Chunk& chunk) { text += chunk.text; });
    check(text == chat.text(), "streamed '" + text + "' == whole '" + chat.text() + "'");
    ChatRequest with_usage = ChatRequest::user("Hello");
    with_usage.max_tokens = 3;
    with_usage.include_usage = true;
    std::optional<Usage> last;
    c.chat_stream(with_usage, [&](const Chunk& chunk) { last = chunk.usage; });
    check(last && last->completion_tokens == 3, "include_usage: the last chunk has the usage");
}

void leave_stream_early() {
    Client c = client();
    GenerateRequest r("x");
    r.max_tokens = 100;
    r.extra["ignore_eos"] = true;
    int seen = 0;
    struct Enough {};
    try {
        c.generate_stream(r, [&](const Chunk&) {
            if (++seen == 2) {
                throw Enough{};
            }
        });
        check(false, "the handler's exception came out of generate_stream");
    } catch (const Enough&) {
    }
    check(seen == 2, "two chunks of a long stream");
    GenerateRequest one("x");
    one.max_tokens = 1;
    check(c.generate(one).usage.completion_tokens == 1, "the client works after a stream left early");
}

void summarize_and_expert_load() {
    Client c = client();
    SummarizeRequest r("The river rose overnight. The town closed the bridge. By noon the water fell and the "
                       "bridge opened.");
    r.max_length = 40;
    r.method = "extractive";
    Summary s = c.summarize(r);
    check(!s.summary.empty() && s.method == "extractive" && s.style == "bullets", "a summary: " + s.summary);
    GenerateRequest one("x");  // routes tokens even when this scenario runs alone
    one.max_tokens = 1;
    c.generate(one);
    std::vector<LayerLoad> load = c.expert_load();
    check(!load.empty() && std::accumulate(load[0].counts.begin(), load[0].counts.end(), std::int64_t{0}) > 0,
          "the expert load counts the tokens routed so far");
}

void wrong_key() {
    for (std::string key : {"wrong", ""}) {
        ApiError e = raises([&] { client(env("SEEKMOE_URL"), key).generate(GenerateRequest("x")); });
        check(e.status() == 401 && e.code() == "invalid_api_key" && e.type() == "authentication_error" &&
                  e.message().find("Bearer") != std::string::npos,
              std::string("401 with the server's fields, key '") + key + "': " + e.what());
    }
}

void bad_request() {
    ClientOptions o;
    o.base_url = env("SEEKMOE_URL");
    o.api_key = env("SEEKMOE_KEY");
    o.backoff = std::chrono::seconds(30);  // a retry would wait for seconds
    Client c(o);
    auto start = Clock::now();
    GenerateRequest hot("x");
    hot.temperature = 5;
    ApiError e = raises([&] { c.generate(hot); });
    check(e.status() == 400 && e.param() == "temperature" && e.message().find("[0, 2]") != std::string::npos &&
              std::string(e.what()).rfind("400 ", 0) == 0, std::string("400 naming temperature: ") + e.what());
    e = raises([&] { c.chat(ChatRequest()); });  // no messages
    check(e.status() == 400 && e.param() == "messages" && e.message().find("at least 1") != std::string::npos,
          std::string("400 naming the empty messages: ") + e.what());
    ChatRequest other = ChatRequest::user("x");
    other.model = "gpt-4";
    e = raises([&] { c.chat_stream(other, [](const Chunk&) {}); });
    check(e.status() == 404 && e.message().find("gpt-4") != std::string::npos,
          std::string("404 for a model not served: ") + e.what());
    SummarizeRequest poem("x");
    poem.style = "poem";
    e = raises([&] { c.summarize(poem); });
    check(e.status() == 400 && e.param() == "style", std::string("400 naming style: ") + e.what());
    check(Clock::now() - start < std::chrono::seconds(20), "refusals are not retried");
}

void too_large() {
    ApiError e = raises([] { client().generate(GenerateRequest(std::string(100'000, 'x'))); });
    check(e.status() == 413 && e.code() == "request_too_large" && e.message().find("limit") != std::string::npos,
          std::string("413 with its code: ") + e.what());
}

// With both places of the busy server held: a 429 at once without retries, then success by retrying (the test
// frees the places once it has seen this client refused too).
void busy_retry() {
    ClientOptions o;
    o.base_url = env("SEEKMOE_BUSY_URL");
    o.max_retries = 0;
    GenerateRequest r("x");
    r.max_tokens = 2;
    ApiError e = raises([&] { Client(o).generate(r); });
    check(e.status() == 429 && e.code() == "queue_full" && e.type() == "rate_limit_error",
          std::string("429 queue_full: ") + e.what());
    o.max_retries = 60;
    o.backoff = std::chrono::milliseconds(50);
    check(Client(o).generate(r).usage.completion_tokens <= 2, "retried until a place freed");
}

void connection_refused() {
    ClientOptions o;
    o.base_url = env("SEEKMOE_DEAD_URL");
    o.max_retries = 2;
    o.backoff = std::chrono::milliseconds(50);
    auto start = Clock::now();
    auto e = raises<ConnectionError>([&] { Client(o).generate(GenerateRequest("x")); });
    check(e.status() == 0 && e.message().find("3 attempts") != std::string::npos &&
              e.message().find(o.base_url) != std::string::npos, std::string("refused: ") + e.what());
    check(Clock::now() - start < std::chrono::seconds(30), "backoffs of 50 and 100 ms, not a hang");
    o.max_retries = 0;
    e = raises<ConnectionError>([&] { Client(o).chat_stream(ChatRequest::user("x"), [](const Chunk&) {}); });
    check(e.message().find("1 attempt)") != std::string::npos, std::string("a stream: ") + e.what());
}

// The fake server sends one event then drops the connection (chunked on generate, unframed on chat).
void stream_cut() {
    ClientOptions o;
    o.base_url = env("SEEKMOE_CUT_URL");
    Client c(o);
    for (bool chat : {false, true}) {
        std::string text;
        auto on_chunk = [&](const Chunk& chunk) { text += chunk.text; };
        auto e = raises<ConnectionError>([&] {
            chat ? c.chat_stream(ChatRequest::user("x"), on_chunk) : c.generate_stream(GenerateRequest("x"), on_chunk);
        });
        check(text == "Hel", "the text before the cut came: '" + text + "'");
        check(e.message().find("cut after 1 event") != std::string::npos, std::string("a cut stream: ") + e.what());
    }
    ApiError e = raises([&] { c.generate_stream(GenerateRequest("error"), [](const Chunk&) {}); });
    check(e.status() == 0 && e.code() == "engine_failed" && e.message() == "the engine stopped",
          std::string("an error event in a stream: ") + e.what());
}

// The fake answers "slow" after 4 s: the client gives up after its 1 s and does not resend.
void timeout() {
    ClientOptions o;
    o.base_url = env("SEEKMOE_CUT_URL");
    o.timeout = std::chrono::seconds(1);
    auto start = Clock::now();
    auto e = raises<ConnectionError>([&] { Client(o).generate(GenerateRequest("slow")); });
    check(e.message().find("did not answer within 1000 ms") != std::string::npos, std::string("a timeout: ") + e.what());
    check(Clock::now() - start < std::chrono::milliseconds(3500), "it gave up before the answer came");
}

void bad_options() {
    ClientOptions o;
    o.max_retries = -1;
    auto e = raises<std::invalid_argument>([&] { Client c(o); });
    check(std::string(e.what()).find("max_retries must be >= 0, got -1") != std::string::npos, e.what());
    o = ClientOptions{};
    o.base_url = "localhost:8000";
    e = raises<std::invalid_argument>([&] { Client c(o); });
    check(std::string(e.what()).find("http://HOST:PORT") != std::string::npos, e.what());
}

// ---- images ---------------------------------------------------------------------------------------------------

Client grounded() { return client(env("SEEKMOE_GROUNDED_URL")); }

std::string picture_bytes() {
    std::ifstream in(env("SEEKMOE_PICTURE"), std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
}

bool is_png(const std::string& data) { return data.size() > 8 && data.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0; }

void save(const std::string& name, const std::string& png) {
    std::ofstream(env("SEEKMOE_OUT") + "/" + name, std::ios::binary) << png;
}

GenerateRequest asked(std::string image) {  // the question about the picture, answered greedily
    GenerateRequest r(env("SEEKMOE_QUESTION"));
    r.images = {std::move(image)};
    r.max_tokens = 80;
    r.temperature = 0;
    return r;
}

ChatRequest asked_chat(std::string image) {
    ChatRequest r({{"user", env("SEEKMOE_QUESTION"), {std::move(image)}}});
    r.max_tokens = 80;
    r.temperature = 0;
    return r;
}

// The picture, read from its file and as bytes, to /v2/generate and to chat: the model's answer about it.
void image_in() {
    Client c = grounded();
    Generation g = c.generate(asked(read_image(env("SEEKMOE_PICTURE"))));
    check(g.text == env("SEEKMOE_ANSWER"), "generate with the picture's file: " + g.text);
    ChatCompletion chat = c.chat(asked_chat(picture_bytes()));
    check(chat.text() == env("SEEKMOE_ANSWER"), "chat with the picture's bytes: " + chat.text());
}

// An answer naming a region of the picture brings it annotated: the same PNG from generate and chat.
void annotated_images() {
    Client c = grounded();
    Generation g = c.generate(asked(picture_bytes()));
    check(g.images.size() == 1 && is_png(g.images[0]), "generate: one PNG, got " + std::to_string(g.images.size()));
    Message m = c.chat(asked_chat(read_image(env("SEEKMOE_PICTURE")))).choices.at(0).message;
    check(m.content == env("SEEKMOE_ANSWER") && m.images == g.images, "chat: the same PNG as generate");
    save("generate.png", g.images[0]);
    save("chat.png", m.images[0]);
}

// No image in the request, no image in the answer, even one naming a region (forced by a grammar).
void no_images() {
    Client c = grounded();
    GenerateRequest forced("Where?");
    forced.max_tokens = 80;
    forced.extra["grammar"] = env("SEEKMOE_ANSWER_GRAMMAR");
    Generation g = c.generate(forced);
    check(g.text == env("SEEKMOE_ANSWER") && g.images.empty(), "a region without an image: " + g.text);
    ChatRequest plain = ChatRequest::user(env("SEEKMOE_QUESTION"));
    plain.max_tokens = 20;
    plain.temperature = 0;
    check(c.chat(plain).choices.at(0).message.images.empty(), "a chat without an image");
    bool any = false;
    c.chat_stream(plain, [&](const Chunk& chunk) { any = any || !chunk.images.empty(); });
    check(!any, "a stream without an image");
}

// Refused before any request (the client points at a dead port), each naming what is wrong.
void image_errors() {
    std::string missing = env("SEEKMOE_PICTURE") + ".missing.png";
    auto e = raises<std::invalid_argument>([&] { read_image(missing); });
    check(std::string(e.what()) == "image file " + missing + " does not exist", e.what());
    std::string folder = std::filesystem::path(env("SEEKMOE_PICTURE")).parent_path().string();
    e = raises<std::invalid_argument>([&] { read_image(folder); });
    check(std::string(e.what()) == "image file " + folder + " is a directory, not a file", e.what());
    e = raises<std::invalid_argument>([&] { read_image(env("SEEKMOE_PICTURE"), 100); });
    check(std::string(e.what()) == "image file " + env("SEEKMOE_PICTURE") + " is over the 100-byte limit", e.what());
    ClientOptions o;
    o.base_url = env("SEEKMOE_DEAD_URL");
    o.max_retries = 0;
    o.max_media_bytes = 100;
    Client small(o);
    std::string over = " is " + std::to_string(picture_bytes().size()) + " bytes; the limit is 100 (max_media_bytes)";
    e = raises<std::invalid_argument>([&] { small.generate(asked(picture_bytes())); });
    check(std::string(e.what()) == "image 1 of the request" + over, e.what());
    ChatRequest two({{"user", "hi"}, {"user", "x", {picture_bytes()}}});
    e = raises<std::invalid_argument>([&] { small.chat_stream(two, [](const Chunk&) {}); });
    check(std::string(e.what()) == "image 1 of message 2" + over, e.what());
    e = raises<std::invalid_argument>([&] { small.generate(asked("not a picture")); });
    check(std::string(e.what()) == "image 1 of the request is not a PNG, JPEG or GIF image (unknown file type)",
          e.what());
    o.max_media_bytes = 0;
    e = raises<std::invalid_argument>([&] { Client c(o); });
    check(std::string(e.what()) == "max_media_bytes must be >= 1, got 0", e.what());
    ClientOptions cut;
    cut.base_url = env("SEEKMOE_CUT_URL");
    ApiError bad = raises([&] { Client(cut).generate(GenerateRequest("bad image")); });
    check(bad.status() == 0 && bad.message().find("is not base64") != std::string::npos,
          std::string("an answer's image that is not base64: ") + bad.what());
}

// A streamed answer naming a region brings the annotated PNG on its finishing chunk, and only there.
void stream_images() {
    Client c = grounded();
    std::vector<Chunk> chunks;
    c.chat_stream(asked_chat(picture_bytes()), [&](const Chunk& chunk) { chunks.push_back(chunk); });
    std::string text;
    for (const Chunk& chunk : chunks) {
        text += chunk.text;
    }
    check(text == env("SEEKMOE_ANSWER"), "the streamed answer: " + text);
    auto with_images = [](const std::vector<Chunk>& all) {
        return std::count_if(all.begin(), all.end(), [](const Chunk& x) { return !x.images.empty(); });
    };
    const Chunk& last = chunks.back();
    check(last.finish_reason == "stop" && last.images.size() == 1 && is_png(last.images[0]) &&
              with_images(chunks) == 1, "chat: the finishing chunk's");
    std::vector<Chunk> generated;
    c.generate_stream(asked(read_image(env("SEEKMOE_PICTURE"))), [&](const Chunk& chunk) {
        generated.push_back(chunk);
    });
    check(generated.back().images == last.images && with_images(generated) == 1, "generate: the last chunk's");
    save("chat-stream.png", last.images[0]);
    save("generate-stream.png", generated.back().images[0]);
}

}  // namespace

int main(int argc, char** argv) {
    const std::map<std::string, std::function<void()>> scenarios = {
        {"generate", generate}, {"generate_stream", generate_stream}, {"chat_and_stream", chat_and_stream},
        {"leave_stream_early", leave_stream_early}, {"summarize_and_expert_load", summarize_and_expert_load},
        {"wrong_key", wrong_key}, {"bad_request", bad_request}, {"too_large", too_large},
        {"busy_retry", busy_retry}, {"connection_refused", connection_refused}, {"stream_cut", stream_cut},
        {"timeout", timeout}, {"bad_options", bad_options}, {"image_in", image_in},
        {"annotated_images", annotated_images}, {"no_images", no_images}, {"image_errors", image_errors},
        {"stream_images", stream_images},
    };
    std::vector<std::string> names(argv + 1, argv + argc);
    if (names.empty()) {
        for (const auto& [name, _] : scenarios) {
            names.push_back(name);
        }
    }
    int failed = 0;
    for (const std::string& name : names) {
        auto it = scenarios.find(name);
        try {
            if (it == scenarios.end()) {
                throw Failure{"no such scenario"};
            }
            it->second();
            std::cout << "PASS " << name << std::endl;
        } catch (const Failure& f) {
            ++failed;
            std::cout << "FAIL " << name << ": " << f.what << std::endl;
        } catch (const std::exception& e) {
            ++failed;
            std::cout << "FAIL " << name << ": unexpected exception: " << e.what() << std::endl;
        }
    }
    return failed;
}
