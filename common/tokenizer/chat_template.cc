#include "common/tokenizer/chat_template.h"

#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/tokenizer/absl_compat.h"
#include "common/tokenizer/python_json.h"

namespace moe::tokenizer {
namespace {

using nlohmann::ordered_json;

constexpr std::string_view kToolsPreamble =
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are "
    "provided with function signatures within <tools></tools> XML tags:\n<tools>";
constexpr std::string_view kToolsPostamble =
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
    "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n";

// Python's str.strip/lstrip/rstrip('\n').
std::string_view LStripNewlines(std::string_view s) {
  while (!s.empty() && s.front() == '\n') s.remove_prefix(1);
  return s;
}
std::string_view RStripNewlines(std::string_view s) {
  while (!s.empty() && s.back() == '\n') s.remove_suffix(1);
  return s;
}
std::string_view StripNewlines(std::string_view s) {
  return RStripNewlines(LStripNewlines(s));
}

// Index of the last real user query: the last user turn that is not a wrapped tool response
// (the template's ns.last_query_index; len-1 when there is none).
size_t LastQueryIndex(std::span<const ChatMessage> messages) {
  for (size_t i = messages.size(); i-- > 0;) {
    const ChatMessage& m = messages[i];
    if (m.role == "user" &&
        !(m.content.starts_with("<tool_response>") && m.content.ends_with("</tool_response>"))) {
      return i;
    }
  }
  return messages.size() - 1;
}

void AppendToolCalls(const ChatMessage& m, std::string_view content, std::string* out) {
  for (size_t i = 0; i < m.tool_calls.size(); ++i) {
    const ToolCall& call = m.tool_calls[i];
    if (i > 0 || !content.empty()) out->append("\n");
    absl::StrAppend(out, "<tool_call>\n{\"name\": \"", call.name, "\", \"arguments\": ");
    if (call.arguments.is_string()) {
      out->append(call.arguments.get_ref<const std::string&>());
    } else {
      out->append(PythonJsonDumps(call.arguments));
    }
    out->append("}\n</tool_call>");
  }
}

void AppendAssistant(ChatTemplateFlavor flavor, const ChatMessage& m, size_t index, bool last,
                     size_t last_query_index, std::string* out) {
  std::string_view content = m.content;
  if (flavor == ChatTemplateFlavor::kInstruct2507) {
    absl::StrAppend(out, "<|im_start|>assistant\n", AbslView(content));
  } else {
    std::string_view reasoning;
    if (m.reasoning_content.has_value()) {
      reasoning = *m.reasoning_content;
    } else if (const size_t first_end = content.find("</think>"); first_end != std::string_view::npos) {
      // reasoning = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n')
      std::string_view before = RStripNewlines(content.substr(0, first_end));
      if (const size_t open = before.rfind("<think>"); open != std::string_view::npos) {
        before = before.substr(open + std::string_view("<think>").size());
      }
      reasoning = LStripNewlines(before);
      // content = content.split('</think>')[-1].lstrip('\n')
      content = LStripNewlines(content.substr(content.rfind("</think>") + 8));
    }
    if (index > last_query_index && (last || !reasoning.empty())) {
      absl::StrAppend(out, "<|im_start|>assistant\n<think>\n", AbslView(StripNewlines(reasoning)),
                      "\n</think>\n\n", AbslView(LStripNewlines(content)));
    } else {
      absl::StrAppend(out, "<|im_start|>assistant\n", AbslView(content));
    }
  }
  AppendToolCalls(m, content, out);
  out->append("<|im_end|>\n");
}

absl::StatusOr<std::string> ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path.string()));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

absl::Status BadMessage(size_t index, std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("messages[", index, "]: ", AbslView(what)));
}

}  // namespace

std::string_view ChatTemplateFlavorName(ChatTemplateFlavor flavor) {
  switch (flavor) {
    case ChatTemplateFlavor::kHybrid:
      return "hybrid";
    case ChatTemplateFlavor::kInstruct2507:
      return "instruct-2507";
    case ChatTemplateFlavor::kThinking2507:
      return "thinking-2507";
  }
  return "unknown";
}

absl::StatusOr<ChatTemplateFlavor> ParseChatTemplateFlavor(std::string_view name) {
  for (ChatTemplateFlavor f :
       {ChatTemplateFlavor::kHybrid, ChatTemplateFlavor::kInstruct2507, ChatTemplateFlavor::kThinking2507}) {
    if (name == ChatTemplateFlavorName(f)) return f;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown chat template \"", AbslView(name),
                                                 "\" (expected hybrid, instruct-2507 or thinking-2507)"));
}

absl::StatusOr<ChatTemplateFlavor> DetectChatTemplateFlavor(std::string_view chat_template) {
  if (absl::StrContains(AbslView(chat_template), "enable_thinking")) return ChatTemplateFlavor::kHybrid;
  // The Jinja source spells the newlines as backslash-n.
  if (absl::StrContains(AbslView(chat_template), R"('<|im_start|>assistant\n<think>\n')")) {
    return ChatTemplateFlavor::kThinking2507;
  }
  if (absl::StrContains(AbslView(chat_template), "<|im_start|>")) return ChatTemplateFlavor::kInstruct2507;
  return absl::InvalidArgumentError("chat_template is not a Qwen3 (ChatML) template");
}

absl::StatusOr<ChatTemplateFlavor> ChatTemplateFlavorFromModelDir(const std::filesystem::path& dir) {
  const std::filesystem::path path = dir / "tokenizer_config.json";
  if (!std::filesystem::exists(path)) return ChatTemplateFlavor::kHybrid;
  absl::StatusOr<std::string> text = ReadFile(path);
  if (!text.ok()) return text.status();
  const ordered_json config = ordered_json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), " is not a JSON object"));
  }
  const auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return ChatTemplateFlavor::kHybrid;
  if (!it->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": chat_template is not a string"));
  }
  absl::StatusOr<ChatTemplateFlavor> flavor = DetectChatTemplateFlavor(it->get_ref<const std::string&>());
  if (!flavor.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": ", flavor.status().message()));
  }
  return flavor;
}

absl::StatusOr<std::string> RenderChat(ChatTemplateFlavor flavor, std::span<const ChatMessage> messages,
                                       const ChatTemplateOptions& options) {
  if (messages.empty()) return absl::InvalidArgumentError("messages is empty");
  for (size_t i = 0; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role != "system" && role != "user" && role != "assistant" && role != "tool") {
      return BadMessage(
          i, absl::StrCat("unknown role \"", role, "\" (expected system, user, assistant or tool)"));
    }
  }
  std::string out;
  const bool leading_system = messages[0].role == "system";
  if (!options.tools.empty()) {
    out.append("<|im_start|>system\n");
    if (leading_system) absl::StrAppend(&out, messages[0].content, "\n\n");
    out.append(kToolsPreamble);
    for (const ordered_json& tool : options.tools) {
      absl::StrAppend(&out, "\n", PythonJsonDumps(tool));
    }
    out.append(kToolsPostamble);
  } else if (leading_system) {
    absl::StrAppend(&out, "<|im_start|>system\n", messages[0].content, "<|im_end|>\n");
  }

  const size_t last_query_index = LastQueryIndex(messages);
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const bool last = i + 1 == messages.size();
    if (m.role == "user" || (m.role == "system" && i != 0)) {
      absl::StrAppend(&out, "<|im_start|>", m.role, "\n", m.content, "<|im_end|>\n");
    } else if (m.role == "assistant") {
      AppendAssistant(flavor, m, i, last, last_query_index, &out);
    } else if (m.role == "tool") {
      if (i == 0 || messages[i - 1].role != "tool") out.append("<|im_start|>user");
      absl::StrAppend(&out, "\n<tool_response>\n", m.content, "\n</tool_response>");
      if (last || messages[i + 1].role != "tool") out.append("<|im_end|>\n");
    }
  }

  if (options.add_generation_prompt) {
    out.append("<|im_start|>assistant\n");
    if (flavor == ChatTemplateFlavor::kHybrid && options.enable_thinking == false) {
      out.append("<think>\n\n</think>\n\n");
    } else if (flavor == ChatTemplateFlavor::kThinking2507) {
      out.append("<think>\n");
    }
  }
  return out;
}

absl::StatusOr<std::vector<ChatMessage>> ChatMessagesFromJson(const ordered_json& messages) {
  if (!messages.is_array()) return absl::InvalidArgumentError("messages is not an array");
  std::vector<ChatMessage> out;
  out.reserve(messages.size());
  for (size_t i = 0; i < messages.size(); ++i) {
    const ordered_json& m = messages[i];
    if (!m.is_object()) return BadMessage(i, "is not an object");
    ChatMessage message;
    const auto role = m.find("role");
    if (role == m.end() || !role->is_string()) return BadMessage(i, "has no string role");
    message.role = role->get<std::string>();
    if (const auto content = m.find("content"); content != m.end() && !content->is_null()) {
      if (!content->is_string()) return BadMessage(i, "content is not a string or null");
      message.content = content->get<std::string>();
    }
    if (const auto r = m.find("reasoning_content"); r != m.end() && !r->is_null()) {
      if (!r->is_string()) return BadMessage(i, "reasoning_content is not a string or null");
      message.reasoning_content = r->get<std::string>();
    }
    if (const auto calls = m.find("tool_calls"); calls != m.end() && !calls->is_null()) {
      if (!calls->is_array()) return BadMessage(i, "tool_calls is not an array");
      for (const ordered_json& call_json : *calls) {
        const ordered_json* call = &call_json;
        if (call->is_object() && call->contains("function")) call = &(*call)["function"];
        if (!call->is_object()) return BadMessage(i, "a tool call is not an object");
        const auto name = call->find("name");
        const auto arguments = call->find("arguments");
        if (name == call->end() || !name->is_string()) {
          return BadMessage(i, "a tool call has no string name");
        }
        if (arguments == call->end()) return BadMessage(i, "a tool call has no arguments");
        message.tool_calls.push_back({name->get<std::string>(), *arguments});
      }
    }
    out.push_back(std::move(message));
  }
  return out;
}

}  // namespace moe::tokenizer
