// Tool calls in generated text, in the format Qwen3's chat template asks for (Hermes style):
//   <tool_call>
//   {"name": <function-name>, "arguments": <args-json-object>}
//   </tool_call>
// possibly several, possibly after some content. "<tool_call>" and "</tool_call>" are added tokens
// of the Qwen3 tokenizer (151657 / 151658) that are not special, so they survive detokenization
// with skip_special_tokens and are seen here as text.
#ifndef MOE_SERVICES_ROUTER_TOOL_CALL_PARSER_H_
#define MOE_SERVICES_ROUTER_TOOL_CALL_PARSER_H_

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moe::router {

inline constexpr std::string_view kToolCallOpen = "<tool_call>";
inline constexpr std::string_view kToolCallClose = "</tool_call>";
// Deepest JSON nesting accepted in tool schemas and tool-call arguments: JSON libraries recurse
// when they print, so unbounded nesting from a client (or a runaway model) could exhaust the stack.
inline constexpr int kMaxToolJsonDepth = 64;

struct GeneratedToolCall {
  std::string id;  // "call_" + 24 random alphanumerics
  std::string name;
  std::string arguments;  // a JSON object, compact
};

// True when `json`'s bracket nesting ({ and [ outside strings) never exceeds `max_depth`. Says
// nothing about whether it is valid JSON.
bool JsonNestingWithin(std::string_view json, int max_depth);

// The call in one block's body (the text between the tags): a JSON object with a string "name"
// (non-empty) and "arguments" that is an object or a string holding the JSON text of one (the
// arguments are then re-serialized compactly, keys in their order). nullopt for anything else.
// The id is left empty.
std::optional<GeneratedToolCall> ParseToolCallBody(std::string_view body);

// "call_" + 24 characters from [A-Za-z0-9], from a per-thread random generator.
std::string MakeToolCallId();

// Splits streamed answer text into content and tool calls. Not thread-safe (one per request).
//
// Text outside <tool_call>...</tool_call> passes through as content, except a suffix that could be
// the start of "<tool_call>" (held until the next piece decides it) and whitespace after a parsed
// call (dropped if only more calls or the end follow: it separates calls, it is not an answer). A
// complete block whose body ParseToolCallBody accepts becomes a call, reported once, by the Push
// that completes its "</tool_call>"; any other block (malformed JSON, a missing name, ...) is
// passed through whole, tags included, as content. So is a block still open at Finish. The split
// never depends on how the text is cut into pieces.
class ToolCallParser {
 public:
  // `make_id` makes each call's id (tests pass a deterministic one); MakeToolCallId by default.
  explicit ToolCallParser(std::function<std::string()> make_id = nullptr);

  // Feeds `piece`, appending the content it releases to `content` and completed calls to `calls`.
  void Push(std::string_view piece, std::string* content, std::vector<GeneratedToolCall>* calls);
  // End of the text: appends everything held (an unclosed block as content) and resets.
  void Finish(std::string* content);

  bool in_block() const { return in_block_; }
  // Bytes currently held back.
  size_t held_bytes() const { return buffer_.size(); }

 private:
  std::function<std::string()> make_id_;
  // Outside a block: held text (whitespace after a call and/or a partial "<tool_call>").
  // Inside a block: the body so far (the opening tag already consumed).
  std::string buffer_;
  bool in_block_ = false;
  // Inside a block: bytes at the start of buffer_ already searched for "</tool_call>".
  size_t searched_ = 0;
  // A call was parsed and only whitespace has followed it since.
  bool after_call_ = false;
};

}  // namespace moe::router

#endif  // MOE_SERVICES_ROUTER_TOOL_CALL_PARSER_H_
