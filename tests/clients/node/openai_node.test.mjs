// openai-node against a live `seekmoe serve` (issue 21), run by tests/clients/test_openai_node.py with node's own
// test runner. The server is a tiny random model: free answers are checked for shape, constrained ones in full.
// SEEKMOE_BASE_URL (…/v1), SEEKMOE_API_KEY and SEEKMOE_MODEL say where it is.
import assert from "node:assert/strict";
import { test } from "node:test";

import OpenAI from "openai";

const { SEEKMOE_BASE_URL: baseURL, SEEKMOE_API_KEY: apiKey, SEEKMOE_MODEL: model } = process.env;
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 120_000 });
const USER = [{ role: "user", content: "Describe the weather as JSON." }];
// fields a random model ends within a few tokens, whatever it picks
const ANSWER = {
  type: "object", additionalProperties: false, required: ["ok", "kind", "n"],
  properties: { ok: { type: "boolean" }, kind: { enum: ["sun", "rain", "snow"] },
                n: { type: "integer", minimum: 0, maximum: 9 } },
};
const WEATHER = {
  type: "function",
  function: {
    name: "get_weather", description: "The weather in a city.", strict: true,
    parameters: { type: "object", additionalProperties: false, required: ["city"],
                  properties: { city: { enum: ["Paris", "Oslo", "Lima"] } } },
  },
};

function checkAnswer(value) {
  assert.deepEqual(Object.keys(value).sort(), ["kind", "n", "ok"]);
  assert.equal(typeof value.ok, "boolean");
  assert.ok(["sun", "rain", "snow"].includes(value.kind));
  assert.ok(Number.isInteger(value.n) && value.n >= 0 && value.n <= 9);
}

test("chat completion", async () => {
  const r = await client.chat.completions.create({ model, messages: USER, max_tokens: 8, temperature: 0 });
  assert.equal(r.object, "chat.completion");
  assert.equal(r.model, model);
  const [choice] = r.choices;
  assert.equal(choice.message.role, "assistant");
  assert.ok(typeof choice.message.content === "string" && choice.message.content.length > 0);
  assert.ok(["stop", "length"].includes(choice.finish_reason));
  assert.ok(r.usage.completion_tokens <= 8 && r.usage.prompt_tokens > 0);
});

test("streamed chat says what the whole answer says", async () => {
  const ask = { model, messages: USER, max_tokens: 8, temperature: 0 };
  const whole = await client.chat.completions.create(ask);
  const stream = await client.chat.completions.create({ ...ask, stream: true, stream_options: { include_usage: true } });
  let text = "";
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    assert.equal(chunk.object, "chat.completion.chunk");
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text += c.delta.content ?? "";
      finish = c.finish_reason ?? finish;
    }
  }
  assert.equal(text, whole.choices[0].message.content);
  assert.equal(finish, whole.choices[0].finish_reason);
  assert.equal(usage.completion_tokens, whole.usage.completion_tokens);
});

test("a required tool is called with arguments that follow its schema", async () => {
  for (const seed of [0, 1, 2]) {
    const r = await client.chat.completions.create({
      model, messages: [{ role: "user", content: "Weather in Paris?" }], tools: [WEATHER], tool_choice: "required",
      parallel_tool_calls: false, max_tokens: 60, temperature: 1.0, seed,
    });
    const [choice] = r.choices;
    assert.equal(choice.finish_reason, "tool_calls");
    assert.equal(choice.message.tool_calls.length, 1);
    const [call] = choice.message.tool_calls;
    assert.ok(call.id && call.type === "function" && call.function.name === "get_weather");
    const args = JSON.parse(call.function.arguments);
    assert.deepEqual(Object.keys(args), ["city"]);
    assert.ok(["Paris", "Oslo", "Lima"].includes(args.city));
  }
});

test("response_format json_schema gives valid JSON", async () => {
  const response_format = { type: "json_schema", json_schema: { name: "weather", schema: ANSWER, strict: true } };
  for (const seed of [0, 1, 2]) {
    const r = await client.chat.completions.create({
      model, messages: USER, response_format, max_tokens: 60, temperature: 1.0, seed,
    });
    assert.equal(r.choices[0].finish_reason, "stop");
    checkAnswer(JSON.parse(r.choices[0].message.content));
  }
});

test("completions", async () => {
  const r = await client.completions.create({ model, prompt: "Once upon a time", max_tokens: 8, temperature: 0 });
  assert.equal(r.object, "text_completion");
  assert.ok(typeof r.choices[0].text === "string" && r.choices[0].text.length > 0);
  assert.ok(["stop", "length"].includes(r.choices[0].finish_reason));
});

test("embeddings, as floats and as base64 (the client's default)", async () => {
  const input = ["The cat sat on the mat.", "x"];
  const floats = await client.embeddings.create({ model, input, encoding_format: "float" });
  const packed = await client.embeddings.create({ model, input }); // the client asks for base64 and decodes it
  assert.equal(floats.object, "list");
  assert.deepEqual(floats.data.map((d) => d.index), [0, 1]);
  for (const [i, d] of floats.data.entries()) {
    const norm = Math.hypot(...d.embedding);
    assert.ok(Math.abs(norm - 1) < 1e-4, `row ${i} is not a unit vector: ${norm}`);
    const other = packed.data[i].embedding;
    assert.equal(other.length, d.embedding.length);
    assert.ok(other.every((x, j) => Math.abs(x - d.embedding[j]) < 1e-6));
  }
});

test("models list", async () => {
  const ids = [];
  for await (const m of client.models.list()) {
    assert.equal(m.object, "model");
    ids.push(m.id);
  }
  assert.ok(ids.includes(model), `${model} not in ${ids}`);
});

test("errors are the client's classes", async () => {
  const wrong = new OpenAI({ baseURL, apiKey: "sk-wrong", maxRetries: 0 });
  await assert.rejects(wrong.chat.completions.create({ model, messages: USER, max_tokens: 4 }), (e) => {
    assert.ok(e instanceof OpenAI.AuthenticationError, e);
    assert.equal(e.status, 401);
    return true;
  });
  await assert.rejects(client.chat.completions.create({ model, messages: USER, max_tokens: 4, temperature: 3 }),
    (e) => {
      assert.ok(e instanceof OpenAI.BadRequestError, e);
      assert.equal(e.status, 400);
      assert.equal(e.param, "temperature");
      assert.equal(e.type, "invalid_request_error");
      return true;
    });
});
