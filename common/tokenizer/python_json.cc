#include "common/tokenizer/python_json.h"

#include <cstdio>

namespace moe::tokenizer {
namespace {

void AppendString(const std::string& s, std::string* out) {
  out->push_back('"');
  for (char c : s) {
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      case '\b':
        out->append("\\b");
        break;
      case '\f':
        out->append("\\f");
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buffer[8];
          std::snprintf(buffer, sizeof(buffer), "\\u%04x", static_cast<unsigned>(c));
          out->append(buffer);
        } else {
          out->push_back(c);  // ensure_ascii=False: UTF-8 passes through
        }
    }
  }
  out->push_back('"');
}

void Append(const nlohmann::ordered_json& value, std::string* out) {
  switch (value.type()) {
    case nlohmann::ordered_json::value_t::object: {
      out->push_back('{');
      bool first = true;
      for (const auto& [key, item] : value.items()) {
        if (!first) out->append(", ");
        first = false;
        AppendString(key, out);
        out->append(": ");
        Append(item, out);
      }
      out->push_back('}');
      break;
    }
    case nlohmann::ordered_json::value_t::array: {
      out->push_back('[');
      bool first = true;
      for (const auto& item : value) {
        if (!first) out->append(", ");
        first = false;
        Append(item, out);
      }
      out->push_back(']');
      break;
    }
    case nlohmann::ordered_json::value_t::string:
      AppendString(value.get_ref<const std::string&>(), out);
      break;
    default:  // null, boolean, numbers
      out->append(value.dump());
  }
}

}  // namespace

std::string PythonJsonDumps(const nlohmann::ordered_json& value) {
  std::string out;
  Append(value, &out);
  return out;
}

}  // namespace moe::tokenizer
