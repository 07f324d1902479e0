#include "services/router/tool_call_parser.h"

#include <algorithm>
#include <utility>

#include "absl/random/random.h"
#include "nlohmann/json.hpp"

namespace moe::router {
namespace {

using nlohmann::ordered_json;

bool IsBlank(std::string_view text) {
  return std::all_of(text.begin(), text.end(),
                     [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; });
}

// Length of the longest proper prefix of kToolCallOpen that `text` ends with.
size_t PartialOpenSuffix(std::string_view text) {
  for (size_t k = std::min(text.size(), kToolCallOpen.size() - 1); k > 0; --k) {
    if (text.ends_with(kToolCallOpen.substr(0, k))) return k;
  }
  return 0;
}

// Parses `text` as one JSON value, or nullopt (invalid, or nested deeper than kMaxToolJsonDepth).
std::optional<ordered_json> ParseJson(std::string_view text) {
  if (!JsonNestingWithin(text, kMaxToolJsonDepth)) return std::nullopt;
  ordered_json value = ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) return std::nullopt;
  return value;
}

}  // namespace

bool JsonNestingWithin(std::string_view json, int max_depth) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < json.size(); ++i) {
    const char c = json[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // the escaped character cannot end the string
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (++depth > max_depth) return false;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return true;
}

std::optional<GeneratedToolCall> ParseToolCallBody(std::string_view body) {
  std::optional<ordered_json> call = ParseJson(body);
  if (!call.has_value() || !call->is_object()) return std::nullopt;
  const auto name = call->find("name");
  const auto arguments = call->find("arguments");
  if (name == call->end() || !name->is_string() || name->get_ref<const std::string&>().empty()) {
    return std::nullopt;
  }
  if (arguments == call->end()) return std::nullopt;
  std::optional<ordered_json> args;
  if (arguments->is_string()) {
    args = ParseJson(arguments->get_ref<const std::string&>());
  } else {
    args = *arguments;
  }
  if (!args.has_value() || !args->is_object()) return std::nullopt;
  GeneratedToolCall out;
  out.name = name->get<std::string>();
  // Compact; the detokenized text is valid UTF-8, but replace rather than throw regardless.
  out.arguments = args->dump(-1, ' ', /*ensure_ascii=*/false, ordered_json::error_handler_t::replace);
  return out;
}

std::string MakeToolCallId() {
  static constexpr std::string_view kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  thread_local absl::BitGen gen;
  std::string id = "call_";
  for (int i = 0; i < 24; ++i) {
    id.push_back(kAlphabet[absl::Uniform<size_t>(gen, 0, kAlphabet.size())]);
  }
  return id;
}

ToolCallParser::ToolCallParser(std::function<std::string()> make_id)
    : make_id_(make_id ? std::move(make_id) : std::function<std::string()>(MakeToolCallId)) {}

void ToolCallParser::Push(std::string_view piece, std::string* content,
                          std::vector<GeneratedToolCall>* calls) {
  buffer_.append(piece);
  size_t pos = 0;  // buffer_[0, pos) is decided
  while (true) {
    if (!in_block_) {
      const size_t open = buffer_.find(kToolCallOpen, pos);
      const std::string_view rest = std::string_view(buffer_).substr(pos);
      const size_t end = open != std::string::npos ? open : buffer_.size() - PartialOpenSuffix(rest);
      const std::string_view text = std::string_view(buffer_).substr(pos, end - pos);
      if (after_call_ && IsBlank(text)) {
        if (open == std::string::npos) break;  // held: what follows decides
        // Only whitespace between two calls: dropped.
      } else {
        content->append(text);
        after_call_ = false;
      }
      if (open == std::string::npos) {
        pos = end;
        break;
      }
      pos = open + kToolCallOpen.size();
      in_block_ = true;
      searched_ = pos;
    } else {
      const size_t close = buffer_.find(kToolCallClose, searched_);
      if (close == std::string::npos) {
        // The next search starts where a tag could still begin.
        searched_ = std::max(pos, buffer_.size() - std::min(buffer_.size(), kToolCallClose.size() - 1));
        break;
      }
      const std::string_view body = std::string_view(buffer_).substr(pos, close - pos);
      std::optional<GeneratedToolCall> call = ParseToolCallBody(body);
      if (call.has_value()) {
        call->id = make_id_();
        calls->push_back(*std::move(call));
        after_call_ = true;
      } else {
        content->append(kToolCallOpen);
        content->append(body);
        content->append(kToolCallClose);
        after_call_ = false;
      }
      pos = close + kToolCallClose.size();
      in_block_ = false;
    }
  }
  buffer_.erase(0, pos);
  if (in_block_) searched_ -= pos;
}

void ToolCallParser::Finish(std::string* content) {
  if (in_block_) {
    content->append(kToolCallOpen);
    content->append(buffer_);
  } else if (!(after_call_ && IsBlank(buffer_))) {
    content->append(buffer_);
  }
  buffer_.clear();
  in_block_ = false;
  searched_ = 0;
  after_call_ = false;
}

}  // namespace moe::router
