// The Qwen3 chat templates, rendered natively (no Jinja engine). Three flavours reproduce the
// Jinja `chat_template` of the Qwen3 releases byte for byte (docs/numerics.md#chat-template):
//   kHybrid       Qwen3-30B-A3B / Qwen3-235B-A22B (thinking switchable with enable_thinking);
//                 third_party/qwen3_tokenizer/tokenizer_config.json holds its template.
//   kInstruct2507 *-Instruct-2507: never emits think tags in the prompt, keeps assistant content
//                 verbatim.
//   kThinking2507 *-Thinking-2507: the generation prompt ends with "<think>\n".
#ifndef MOE_COMMON_TOKENIZER_CHAT_TEMPLATE_H_
#define MOE_COMMON_TOKENIZER_CHAT_TEMPLATE_H_

#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace moe::tokenizer {

enum class ChatTemplateFlavor { kHybrid, kInstruct2507, kThinking2507 };

// "hybrid", "instruct-2507", "thinking-2507".
std::string_view ChatTemplateFlavorName(ChatTemplateFlavor flavor);
// Inverse of ChatTemplateFlavorName; INVALID_ARGUMENT for other names.
absl::StatusOr<ChatTemplateFlavor> ParseChatTemplateFlavor(std::string_view name);

// Recognises a tokenizer_config.json chat_template text: one that mentions enable_thinking is
// kHybrid, one whose generation prompt forces "<think>\n" is kThinking2507, any other ChatML
// (<|im_start|>) template is kInstruct2507. INVALID_ARGUMENT for a template that is not ChatML.
absl::StatusOr<ChatTemplateFlavor> DetectChatTemplateFlavor(std::string_view chat_template);

// The flavour of a model directory from <dir>/tokenizer_config.json's "chat_template"; kHybrid
// (the default Qwen3-MoE release) when the file or the key is absent. INVALID_ARGUMENT for a file
// that is not JSON or an unrecognised template.
absl::StatusOr<ChatTemplateFlavor> ChatTemplateFlavorFromModelDir(const std::filesystem::path& dir);

struct ToolCall {
  std::string name;
  // A JSON string is emitted verbatim (the template's `arguments is string` branch); anything
  // else goes through tojson.
  nlohmann::ordered_json arguments = nlohmann::ordered_json::object();
};

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" or "tool"
  std::string content;
  // Assistant only. When absent, reasoning is taken from a "<think>...</think>" prefix of content.
  std::optional<std::string> reasoning_content;
  std::vector<ToolCall> tool_calls;  // assistant only
};

struct ChatTemplateOptions {
  bool add_generation_prompt = true;
  // Hybrid only: false appends the empty "<think>\n\n</think>\n\n" block to the generation prompt;
  // unset or true leaves thinking to the model. Ignored by the 2507 flavours.
  std::optional<bool> enable_thinking;
  // Tool (function) schemas, rendered with tojson into the system turn when non-empty.
  std::vector<nlohmann::ordered_json> tools;
};

// Renders `messages` as the flavour's Jinja template does with transformers'
// apply_chat_template(tokenize=False). INVALID_ARGUMENT for an empty list or an unknown role.
absl::StatusOr<std::string> RenderChat(ChatTemplateFlavor flavor, std::span<const ChatMessage> messages,
                                       const ChatTemplateOptions& options);

// Reads OpenAI-style messages: [{"role": ..., "content": string|null, "reasoning_content": ...,
// "tool_calls": [{"function": {"name": ..., "arguments": string|object}} or {"name",
// "arguments"}]}]. INVALID_ARGUMENT naming the offending message for anything else.
absl::StatusOr<std::vector<ChatMessage>> ChatMessagesFromJson(const nlohmann::ordered_json& messages);

}  // namespace moe::tokenizer

#endif  // MOE_COMMON_TOKENIZER_CHAT_TEMPLATE_H_
