#include "tests/tools/generate_json.h"

#include <algorithm>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace moe::testing {

absl::StatusOr<GenerateJson> ParseGenerateJson(std::string_view out) {
  GenerateJson parsed;
  std::istringstream in{std::string(out)};
  int number = 0;
  for (std::string line; std::getline(in, line);) {
    ++number;
    if (line.empty()) continue;
    nlohmann::ordered_json value = nlohmann::ordered_json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!value.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat("line ", number, " is not a JSON object: ", line));
    }
    // Moves the string field `key` (if any) from the line to the end of `*to`.
    auto take = [&](const char* key, std::string* to) -> absl::Status {
      const auto field = value.find(key);
      if (field == value.end()) return absl::OkStatus();
      if (!field->is_string()) {
        return absl::InvalidArgumentError(absl::StrCat("line ", number, ": \"", key, "\" is not a string"));
      }
      *to += field->get<std::string>();
      value.erase(field);
      return absl::OkStatus();
    };
    if (absl::Status s = take("text", &parsed.text); !s.ok()) return s;
    if (absl::Status s = take("reasoning_text", &parsed.reasoning_text); !s.ok()) return s;
    // Not a token: the summary line, or embedded mode's trailing text.
    if (!value.contains("id")) continue;
    parsed.tokens.push_back(value.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace));
  }
  return parsed;
}

int FirstTokenDifference(const GenerateJson& a, const GenerateJson& b) {
  for (size_t i = 0; i < std::max(a.tokens.size(), b.tokens.size()); ++i) {
    if (i >= a.tokens.size() || i >= b.tokens.size() || a.tokens[i] != b.tokens[i])
      return static_cast<int>(i);
  }
  return -1;
}

}  // namespace moe::testing
