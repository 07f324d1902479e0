// Turns the token ids a worker generates into the text the client sees: incremental
// detokenization, thinking split (<think>...</think> goes to reasoning_text), stop strings and,
// for requests that offered tools, tool calls parsed out of the answer text.
#ifndef MOE_SERVICES_ROUTER_OUTPUT_PROCESSOR_H_
#define MOE_SERVICES_ROUTER_OUTPUT_PROCESSOR_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/tokenizer/incremental_detokenizer.h"
#include "common/tokenizer/tokenizer.h"
#include "services/router/stop_strings.h"
#include "services/router/tool_call_parser.h"

namespace moe::router {

struct ThinkTokens {
  // Ids of "<think>" and "</think>" (151667 / 151668 for Qwen3); nullopt when the tokenizer has
  // none, and then no splitting happens.
  std::optional<int32_t> begin;
  std::optional<int32_t> end;

  static ThinkTokens FromTokenizer(const tokenizer::Tokenizer& tokenizer);
  // True when the prompt leaves the model inside a think block (its last think tag is "<think>",
  // as the Thinking-2507 generation prompt does): the output then starts as reasoning.
  bool PromptOpensThinking(const std::vector<int32_t>& prompt) const;
};

// Text produced by some tokens. Append-only: Add/Finish append to it.
struct OutputDelta {
  std::string text;
  std::string reasoning_text;
  // Set once, when a stop string matched: its index in the stop list.
  std::optional<size_t> matched_stop;
  // Tool calls completed by these tokens (only with parse_tool_calls).
  std::vector<GeneratedToolCall> tool_calls;
};

// Not thread-safe (one per request). `tokenizer` must outlive it.
//
// The think tags themselves never appear in either text (they are markers, not content). Stop
// strings are matched within each channel separately (a stop string cannot span a think tag);
// both channels are checked. After a stop string matched, every later token is ignored.
//
// With parse_tool_calls, the answer channel's text goes through a ToolCallParser after the stop
// strings (as vLLM matches stop strings on the whole output, tool-call markup included): `text`
// then carries only the content and `tool_calls` each call, once, in the delta of the token that
// closed it. A stop string or the end of generation ends any open block, which is returned as
// content; so does a switch to the reasoning channel.
class OutputProcessor {
 public:
  OutputProcessor(const tokenizer::Tokenizer& tokenizer, bool skip_special_tokens, ThinkTokens think,
                  bool start_in_reasoning, const std::vector<std::string>& stops,
                  bool parse_tool_calls = false);

  // Processes one generated token, appending its text to `delta`. Returns false (and appends
  // nothing) when a stop string matched before this token.
  bool Add(int32_t id, OutputDelta* delta);
  // End of generation: appends everything held back (an unfinished UTF-8 character becomes
  // U+FFFD). No-op after a stop string matched.
  void Finish(OutputDelta* delta);

  bool stopped() const { return stopped_; }
  bool in_reasoning() const { return in_reasoning_; }

 private:
  // Sends `piece` through the current channel's stop matcher into `delta`.
  void Emit(const std::string& piece, OutputDelta* delta);
  // Appends answer text that passed the stop strings: through the tool-call parser if any.
  void AppendAnswer(std::string_view text, OutputDelta* delta);
  // Ends the tool-call parser's input (held text and an open block become content).
  void FinishToolCalls(OutputDelta* delta);
  // Flushes the detokenizer and the current channel's held text (before switching channels).
  void FlushChannel(OutputDelta* delta);

  tokenizer::IncrementalDetokenizer detokenizer_;
  ThinkTokens think_;
  bool in_reasoning_;
  StopStringMatcher answer_stops_;
  StopStringMatcher reasoning_stops_;
  std::optional<ToolCallParser> tool_calls_;
  bool stopped_ = false;
};

}  // namespace moe::router

#endif  // MOE_SERVICES_ROUTER_OUTPUT_PROCESSOR_H_
