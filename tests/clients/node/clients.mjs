// The official openai npm package against a Sluice gateway, one scenario per run:
//   node clients.mjs <scenario> <base URL, e.g. http://127.0.0.1:8000/v1> <model> [api key]
// It prints one JSON object on stdout, what the scenario saw; pytest checks it
// (tests/clients/test_node_openai.py). Exit status 0 unless something unexpected threw.
import OpenAI from "openai";

const [scenario, baseURL, model, apiKey = "unused"] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60_000 });
const messages = [{ role: "user", content: "Say hello" }];

const scenarios = {
  // Every content delta, then the usage chunk that stream_options asked for.
  async stream() {
    const stream = await client.chat.completions.create({
      model, messages, max_tokens: 8, stream: true, stream_options: { include_usage: true },
    });
    const pieces = [];
    let usage = null;
    for await (const chunk of stream) {
      const piece = chunk.choices[0]?.delta?.content;
      if (piece) {
        pieces.push(piece);
      }
      if (chunk.usage) {
        usage = chunk.usage;
      }
    }
    return { pieces, usage };
  },

  // AbortController after three content chunks: the SDK drops the connection (and
  // ends the iteration, or throws its abort error; either is fine).
  async abort() {
    const controller = new AbortController();
    const stream = await client.chat.completions.create(
      { model, messages, max_tokens: 2000, stream: true },
      { signal: controller.signal });
    let seen = 0;
    let error = null;
    try {
      for await (const chunk of stream) {
        if (chunk.choices[0]?.delta?.content) {
          seen += 1;
        }
        if (seen === 3) {
          controller.abort();
        }
      }
    } catch (thrown) {
      error = thrown.constructor.name;
    }
    return { seen, error, aborted: controller.signal.aborted };
  },

  // An invalid field: the SDK's typed error, with the gateway's OpenAI-shaped body.
  async "bad-request"() {
    try {
      await client.chat.completions.create({ model, messages, max_tokens: "ten" });
    } catch (error) {
      return {
        status: error.status, name: error.constructor.name,
        bad_request: error instanceof OpenAI.BadRequestError,
        param: error.param ?? null, message: error.message,
      };
    }
    return { status: 200 };
  },

  // The Responses API, streamed: its event types in order, and the text.
  async responses() {
    const stream = await client.responses.create({
      model, input: "Say hello", max_output_tokens: 16, stream: true,
    });
    const types = [];
    let text = "";
    for await (const event of stream) {
      types.push(event.type);
      if (event.type === "response.output_text.delta") {
        text += event.delta;
      }
    }
    return { types, text };
  },
};

const run = scenarios[scenario];
if (!run) {
  console.error(`unknown scenario ${scenario}; one of ${Object.keys(scenarios).join(", ")}`);
  process.exit(2);
}
console.log(JSON.stringify(await run()));
