// The router's OpenAI-compatible HTTP API (docs/http-api.md) driven by the official `openai` npm
// client, which nobody here wrote: it parses our JSON, our SSE stream and our error objects as it
// parses OpenAI's. The model is the random tiny test model, so its text is arbitrary; what is
// checked is the shape, and that greedy output through HTTP is the gRPC output (`moectl generate
// --router`, the same router).
//
// Usage: node oracle.mjs --http http://127.0.0.1:H/v1 --router 127.0.0.1:P --moectl PATH
//        node oracle.mjs --phase tools --http http://127.0.0.1:H/v1 --key KEY
// The tools phase runs against a router that requires API key KEY, in front of a fake attention
// worker whose every answer is a planted Qwen3 tool call (get_weather, {"city": "Paris", ...}).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import OpenAI from "openai";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, v, i, all) => (i % 2 === 0 ? [...pairs, [v.replace(/^--/, ""), all[i + 1]]] : pairs), []),
);
let failures = 0;
async function check(name, fn) {
  try {
    await fn();
    console.log(`ok   ${name}`);
  } catch (e) {
    failures++;
    console.log(`FAIL ${name}\n${e && e.stack ? e.stack : e}`);
  }
}

if (args.phase === "tools") {
  await toolsPhase();
  process.exit(failures ? 1 : 0);
}

for (const k of ["http", "router", "moectl"]) {
  if (!args[k]) {
    console.error(`missing --${k}`);
    process.exit(2);
  }
}

const client = new OpenAI({ baseURL: args.http, apiKey: "sk-unused", maxRetries: 0, timeout: 120_000 });
const MODEL = (await client.models.list()).data[0].id;
const PROMPT = "Tell me about the sea.";
const MAX_TOKENS = 12;

// Greedy output of the gRPC API: `moectl generate --router ... --json` lines, then a summary.
function grpcGenerate(extra) {
  const out = execFileSync(
    args.moectl,
    ["generate", "--router", args.router, "--prompt", PROMPT, "--max-tokens", String(MAX_TOKENS), "--temperature", "0",
     "--json", "--timeout", "120", ...extra],
    { encoding: "utf8" },
  );
  const lines = out.trim().split("\n").map((l) => JSON.parse(l));
  const summary = lines.pop();
  return {
    text: lines.map((l) => l.text).join(""),
    reasoning: lines.map((l) => l.reasoning_text ?? "").join(""),
    completionTokens: summary.usage.completion_tokens,
    promptTokens: summary.usage.prompt_tokens,
    finishReason: summary.finish_reason,
  };
}

function chat(extra = {}) {
  return client.chat.completions.create({
    model: MODEL,
    messages: [{ role: "user", content: PROMPT }],
    max_tokens: MAX_TOKENS,
    temperature: 0,
    ...extra,
  });
}

await check("models lists the served model", async () => {
  const models = await client.models.list();
  assert.equal(models.data.length, 1);
  assert.equal(models.data[0].object, "model");
});

let greedyOff;  // the non-streaming, thinking-off answer
await check("chat, non-streaming, thinking off: no reasoning, same as gRPC", async () => {
  const r = await chat({ chat_template_kwargs: { enable_thinking: false } });
  assert.equal(r.object, "chat.completion");
  assert.match(r.id, /^chatcmpl-/);
  assert.equal(r.choices.length, 1);
  const m = r.choices[0].message;
  assert.equal(m.role, "assistant");
  assert.equal(m.reasoning_content, undefined, "thinking off: no reasoning_content");
  const g = grpcGenerate(["--chat", "--no-thinking"]);
  assert.equal(g.reasoning, "");
  assert.equal(m.content, g.text);
  assert.equal(r.usage.completion_tokens, g.completionTokens);
  assert.equal(r.usage.prompt_tokens, g.promptTokens);
  assert.equal(r.usage.total_tokens, g.promptTokens + g.completionTokens);
  assert.ok(m.content.length > 0, "the greedy answer has text");
  greedyOff = r;
});

await check("chat, thinking on: the reasoning/answer split is the gRPC one", async () => {
  // The random tiny model may or may not open a think block; either way HTTP must carry exactly
  // what the gRPC API splits (reasoning_content present iff gRPC has reasoning text). A planted think
  // block is checked in tests/services/router/openai/http_server_test.cc.
  const r = await chat({ chat_template_kwargs: { enable_thinking: true } });
  const g = grpcGenerate(["--chat", "--thinking"]);
  const m = r.choices[0].message;
  assert.equal(m.reasoning_content ?? "", g.reasoning);
  if (g.reasoning === "") assert.equal(m.reasoning_content, undefined);
  assert.equal(m.content, g.text);
  // A different prompt (no empty think block): a different greedy continuation.
  assert.notEqual(m.content + (m.reasoning_content ?? ""), greedyOff.choices[0].message.content);
});

await check("chat, streaming with include_usage: same text as non-streaming, usage chunk last", async () => {
  const stream = await chat({
    chat_template_kwargs: { enable_thinking: false },
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let finish = null;
  let usage = null;
  let chunks = 0;
  let sawRole = false;
  for await (const chunk of stream) {
    chunks++;
    assert.equal(chunk.object, "chat.completion.chunk");
    assert.equal(usage, null, "the usage chunk is the last one");
    if (chunk.choices.length === 0) {
      usage = chunk.usage;
      continue;
    }
    const d = chunk.choices[0].delta;
    if (d.role) sawRole = true;
    text += d.content ?? "";
    assert.equal(d.reasoning_content, undefined);
    if (chunk.choices[0].finish_reason) finish = chunk.choices[0].finish_reason;
  }
  assert.ok(chunks > 2, `${chunks} chunks`);
  assert.ok(sawRole);
  assert.equal(text, greedyOff.choices[0].message.content);
  assert.equal(finish, greedyOff.choices[0].finish_reason);
  assert.deepEqual(usage, greedyOff.usage);
});

await check("streaming without include_usage has no usage chunk", async () => {
  const stream = await chat({ chat_template_kwargs: { enable_thinking: false }, stream: true });
  for await (const chunk of stream) {
    assert.ok(chunk.choices.length === 1, "every chunk has its choice");
    assert.ok(!chunk.usage);
  }
});

await check("stop strings end the answer before the stop string", async () => {
  const full = greedyOff.choices[0].message.content;
  // A stop string from the middle of the greedy answer: the answer must end right before its first
  // occurrence (the greedy prefix is the same).
  const chars = Array.from(full);  // code points: never half a surrogate pair
  const from = Math.floor(chars.length / 3);
  const stop = chars.slice(from, from + 3).join("");
  assert.ok(stop.length > 0, `answer too short: ${JSON.stringify(full)}`);
  const r = await chat({ chat_template_kwargs: { enable_thinking: false }, stop: [stop, "\u0001never"] });
  assert.equal(r.choices[0].message.content, full.slice(0, full.indexOf(stop)));
  assert.equal(r.choices[0].finish_reason, "stop");
});

await check("completions: greedy text prompt, same as gRPC", async () => {
  const r = await client.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: MAX_TOKENS, temperature: 0 });
  assert.equal(r.object, "text_completion");
  assert.match(r.id, /^cmpl-/);
  const g = grpcGenerate([]);
  assert.equal(r.choices[0].text, g.reasoning + g.text);
  assert.equal(r.usage.completion_tokens, g.completionTokens);
});

await check("n=2 with a seed: two indexed choices, reproducible", async () => {
  const a = await chat({ n: 2, seed: 7, temperature: 1, chat_template_kwargs: { enable_thinking: false } });
  const b = await chat({ n: 2, seed: 7, temperature: 1, chat_template_kwargs: { enable_thinking: false } });
  assert.deepEqual(a.choices.map((c) => c.index), [0, 1]);
  assert.deepEqual(a.choices.map((c) => c.message.content), b.choices.map((c) => c.message.content));
});

await check("an invalid request is a 400 BadRequestError with an OpenAI error object", async () => {
  await assert.rejects(chat({ max_tokens: -1 }), (e) => {
    assert.ok(e instanceof OpenAI.BadRequestError, `got ${e && e.constructor && e.constructor.name}`);
    assert.equal(e.status, 400);
    assert.equal(e.error.type, "invalid_request_error");
    assert.equal(e.param, "max_tokens");
    assert.match(e.message, /max_tokens/);
    return true;
  });
  await assert.rejects(chat({ top_p: 0 }), (e) => e instanceof OpenAI.BadRequestError && /top_p/.test(e.message));
  await assert.rejects(chat({ frobnicate: true }), (e) => e instanceof OpenAI.BadRequestError && e.param === "frobnicate");
});

async function toolsPhase() {
  const TOOLS = [{
    type: "function",
    function: {
      name: "get_weather",
      description: "The current weather in a city.",
      parameters: { type: "object", properties: { city: { type: "string" }, unit: { type: "string" } }, required: ["city"] },
    },
  }];
  const authed = new OpenAI({ baseURL: args.http, apiKey: args.key, maxRetries: 0, timeout: 60_000 });
  const model = (await authed.models.list()).data[0].id;
  const ask = [{ role: "user", content: "What is the weather in Paris?" }];

  await check("a missing or wrong API key is a 401 AuthenticationError", async () => {
    for (const apiKey of ["", "sk-wrong-key-0123456789"]) {
      const other = new OpenAI({ baseURL: args.http, apiKey: apiKey || "unset", maxRetries: 0, defaultHeaders: apiKey ? {} : { Authorization: null } });
      await assert.rejects(other.chat.completions.create({ model, messages: ask, max_tokens: 8 }), (e) => {
        assert.ok(e instanceof OpenAI.AuthenticationError, `got ${e && e.constructor && e.constructor.name}`);
        assert.equal(e.status, 401);
        assert.ok(!String(e.message).includes("sk-wrong-key"), "the key is echoed");
        return true;
      });
    }
    await assert.rejects(new OpenAI({ baseURL: args.http, apiKey: "sk-wrong-key-0123456789", maxRetries: 0 }).models.list(),
      (e) => e instanceof OpenAI.AuthenticationError);
  });

  let call;
  await check("tools: the planted <tool_call> comes back as message.tool_calls, finish_reason tool_calls", async () => {
    const r = await authed.chat.completions.create({ model, messages: ask, tools: TOOLS, max_tokens: 64 });
    const m = r.choices[0].message;
    assert.equal(r.choices[0].finish_reason, "tool_calls");
    assert.ok(!m.content || !m.content.includes("<tool_call>"), `tool-call markup in content: ${m.content}`);
    assert.equal(m.tool_calls.length, 1);
    call = m.tool_calls[0];
    assert.equal(call.type, "function");
    assert.match(call.id, /^call_/);
    assert.equal(call.function.name, "get_weather");
    assert.deepEqual(JSON.parse(call.function.arguments), { city: "Paris", unit: "celsius" });
  });

  await check("tools, streaming: the tool call arrives as deltas the client reassembles", async () => {
    const stream = await authed.chat.completions.create({ model, messages: ask, tools: TOOLS, max_tokens: 64, stream: true });
    const calls = {};
    let finish = null, content = "";
    for await (const chunk of stream) {
      for (const choice of chunk.choices) {
        content += choice.delta.content ?? "";
        for (const d of choice.delta.tool_calls ?? []) {
          const c = (calls[d.index] ??= { id: "", name: "", arguments: "" });
          c.id += d.id ?? "";
          c.name += d.function?.name ?? "";
          c.arguments += d.function?.arguments ?? "";
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    assert.equal(finish, "tool_calls");
    assert.ok(!content.includes("<tool_call>"), `tool-call markup in content: ${content}`);
    assert.deepEqual(Object.keys(calls), ["0"]);
    assert.equal(calls[0].name, "get_weather");
    assert.match(calls[0].id, /^call_/);
    assert.deepEqual(JSON.parse(calls[0].arguments), { city: "Paris", unit: "celsius" });
  });

  await check("tools: the assistant's tool call and the tool's result go back in", async () => {
    assert.ok(call, "no tool call from the first check");
    const r = await authed.chat.completions.create({
      model,
      tools: TOOLS,
      max_tokens: 64,
      messages: [...ask, { role: "assistant", content: null, tool_calls: [call] },
                 { role: "tool", tool_call_id: call.id, content: JSON.stringify({ temperature: 21 }) }],
    });
    assert.equal(r.choices[0].finish_reason, "tool_calls");  // the fake worker always calls
    assert.ok(r.usage.prompt_tokens > 0);
  });

  await check("without tools the same output is plain text", async () => {
    const r = await authed.chat.completions.create({ model, messages: ask, max_tokens: 64 });
    assert.equal(r.choices[0].finish_reason, "stop");
    assert.match(r.choices[0].message.content, /<tool_call>/);
    assert.ok(!r.choices[0].message.tool_calls || r.choices[0].message.tool_calls.length === 0);
  });
}

if (failures) {
  console.log(`${failures} check(s) failed`);
  process.exit(1);
}
console.log("all checks passed");
