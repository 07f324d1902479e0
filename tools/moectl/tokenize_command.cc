// moectl tokenize (docs/operations.md#moectl): JSON lines on stdin to JSON lines on stdout.
//   default   {"text": "..."}                                   -> {"ids": [...]}
//   --decode  {"ids": [...], "skip_special_tokens": false}      -> {"text": "..."}
//   --chat    {"messages": [...], "enable_thinking": bool, "tools": [...]}
//                                                               -> {"ids": [...]} (generation
//                                                               prompt added)
// No special tokens are added; special-token text maps to its id. A bad line stops the command
// with "line N: ..." on stderr and exit 1, after the lines before it were answered.
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "common/tokenizer/chat_template.h"
#include "common/tokenizer/tokenizer.h"
#include "common/tokenizer/utf8.h"
#include "nlohmann/json.hpp"
#include "tools/moectl/commands.h"

namespace moe::moectl {
namespace {

using nlohmann::ordered_json;

struct TokenizeOptions {
  std::string model_dir;
  bool decode = false;
  bool chat = false;
  std::string chat_template;  // empty: detect from the model dir
};

[[noreturn]] void FailLine(int line, const std::string& message) {
  Fail("tokenize", "line " + std::to_string(line) + ": " + message);
}

std::string StatusText(const absl::Status& status) {
  return std::string(status.message());
}

ordered_json EncodeLine(const tokenizer::Tokenizer& tok, const ordered_json& request, int line) {
  const auto text = request.find("text");
  if (text == request.end() || !text->is_string()) FailLine(line, "expected {\"text\": string}");
  auto ids = tok.Encode(text->get_ref<const std::string&>());
  if (!ids.ok()) FailLine(line, StatusText(ids.status()));
  return {{"ids", *ids}};
}

ordered_json DecodeLine(const tokenizer::Tokenizer& tok, const ordered_json& request, int line) {
  const auto ids_json = request.find("ids");
  if (ids_json == request.end() || !ids_json->is_array()) {
    FailLine(line, "expected {\"ids\": [integers]}");
  }
  std::vector<int32_t> ids;
  ids.reserve(ids_json->size());
  for (const ordered_json& id : *ids_json) {
    if (!id.is_number_integer() || id.get<int64_t>() < INT32_MIN || id.get<int64_t>() > INT32_MAX) {
      FailLine(line, "ids must be integers, got " + id.dump());
    }
    ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
  }
  if (absl::Status status = tok.ValidateIds(ids); !status.ok()) FailLine(line, StatusText(status));
  bool skip_special = false;
  if (const auto skip = request.find("skip_special_tokens"); skip != request.end()) {
    if (!skip->is_boolean()) FailLine(line, "skip_special_tokens must be a boolean");
    skip_special = skip->get<bool>();
  }
  return {{"text", tok.Decode(ids, skip_special)}};
}

ordered_json ChatLine(const tokenizer::Tokenizer& tok, tokenizer::ChatTemplateFlavor flavor,
                      const ordered_json& request, int line) {
  const auto messages_json = request.find("messages");
  if (messages_json == request.end()) FailLine(line, "expected {\"messages\": [...]}");
  auto messages = tokenizer::ChatMessagesFromJson(*messages_json);
  if (!messages.ok()) FailLine(line, StatusText(messages.status()));
  tokenizer::ChatTemplateOptions options;
  if (const auto thinking = request.find("enable_thinking");
      thinking != request.end() && !thinking->is_null()) {
    if (!thinking->is_boolean()) FailLine(line, "enable_thinking must be a boolean");
    options.enable_thinking = thinking->get<bool>();
  }
  if (const auto tools = request.find("tools"); tools != request.end() && !tools->is_null()) {
    if (!tools->is_array()) FailLine(line, "tools must be an array");
    options.tools.assign(tools->begin(), tools->end());
  }
  auto prompt = tokenizer::RenderChat(flavor, *messages, options);
  if (!prompt.ok()) FailLine(line, StatusText(prompt.status()));
  auto ids = tok.Encode(*prompt);
  if (!ids.ok()) FailLine(line, StatusText(ids.status()));
  return {{"ids", *ids}};
}

void RunTokenize(const TokenizeOptions& options) {
  auto tok = tokenizer::Tokenizer::FromModelDir(options.model_dir);
  if (!tok.ok()) Fail("tokenize", StatusText(tok.status()));
  tokenizer::ChatTemplateFlavor flavor = tokenizer::ChatTemplateFlavor::kHybrid;
  if (options.chat) {
    auto chosen = options.chat_template.empty() ? tokenizer::ChatTemplateFlavorFromModelDir(options.model_dir)
                                                : tokenizer::ParseChatTemplateFlavor(options.chat_template);
    if (!chosen.ok()) Fail("tokenize", StatusText(chosen.status()));
    flavor = *chosen;
  }
  std::string text;
  for (int line = 1; std::getline(std::cin, text); ++line) {
    if (!text.empty() && text.back() == '\r') text.pop_back();
    if (text.find_first_not_of(" \t") == std::string::npos) continue;
    if (absl::Status utf8 = tokenizer::ValidateUtf8(text); !utf8.ok()) {
      FailLine(line, StatusText(utf8));
    }
    const ordered_json request = ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (request.is_discarded()) FailLine(line, "invalid JSON");
    if (!request.is_object()) FailLine(line, "expected a JSON object");
    const ordered_json response = options.decode ? DecodeLine(**tok, request, line)
                                  : options.chat ? ChatLine(**tok, flavor, request, line)
                                                 : EncodeLine(**tok, request, line);
    std::cout << response.dump() << '\n' << std::flush;
  }
  if (std::cin.bad()) Fail("tokenize", "error reading stdin");
}

}  // namespace

void RegisterTokenizeCommand(CLI::App& app) {
  auto options = std::make_shared<TokenizeOptions>();
  CLI::App* cmd = app.add_subcommand(
      "tokenize",
      "Tokenize JSON lines from stdin: {\"text\"} -> {\"ids\"}; --decode {\"ids\"} -> {\"text\"}; "
      "--chat {\"messages\", \"enable_thinking\", \"tools\"} -> {\"ids\"} with the generation "
      "prompt");
  cmd->add_option("--model", options->model_dir, "Model directory holding tokenizer.json")->required();
  CLI::Option* decode = cmd->add_flag("--decode", options->decode, "Decode ids to text");
  CLI::Option* chat = cmd->add_flag("--chat", options->chat, "Render chat messages with the chat template");
  decode->excludes(chat);
  cmd->add_option("--chat-template", options->chat_template,
                  "Chat template flavour: hybrid, instruct-2507 or thinking-2507 (default: "
                  "detected from the model's tokenizer_config.json)")
      ->needs(chat);
  cmd->callback([options] { RunTokenize(*options); });
}

}  // namespace moe::moectl
