// Tokenizer::FromJson / FromModelDir: reading a Hugging Face tokenizer.json.
#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "common/tokenizer/absl_compat.h"
#include "common/tokenizer/byte_level.h"
#include "common/tokenizer/tokenizer.h"
#include "nlohmann/json.hpp"

namespace moe::tokenizer {
namespace {

using nlohmann::json;

absl::Status Invalid(std::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("tokenizer.json: ", AbslView(what)));
}

// The Split regex of the pre-tokenizer (a single Split, or one inside a Sequence); "" if none.
absl::StatusOr<std::string> FindSplitPattern(const json& pre) {
  if (pre.is_null()) return std::string();
  if (!pre.is_object()) return Invalid("pre_tokenizer is not an object");
  const auto type = pre.find("type");
  if (type == pre.end() || !type->is_string()) return Invalid("pre_tokenizer has no type");
  if (*type == "Sequence") {
    const auto list = pre.find("pretokenizers");
    if (list == pre.end() || !list->is_array()) return Invalid("Sequence without pretokenizers");
    std::string found;
    for (const json& p : *list) {
      ASSIGN_OR_RETURN(std::string pattern, FindSplitPattern(p));
      if (!pattern.empty()) {
        if (!found.empty()) return Invalid("more than one Split pre-tokenizer is not supported");
        found = std::move(pattern);
      }
    }
    return found;
  }
  if (*type == "ByteLevel") {
    const auto use_regex = pre.find("use_regex");
    if (use_regex != pre.end() && use_regex->is_boolean() && use_regex->get<bool>()) {
      return Invalid("ByteLevel pre-tokenizer with use_regex=true is not supported");
    }
    return std::string();
  }
  if (*type == "Split") {
    const auto pattern = pre.find("pattern");
    if (pattern == pre.end() || !pattern->is_object()) return Invalid("Split without pattern");
    const auto regex = pattern->find("Regex");
    if (regex == pattern->end() || !regex->is_string() || regex->get<std::string>().empty()) {
      return Invalid("only Split with a Regex pattern is supported");
    }
    const auto behavior = pre.find("behavior");
    if (behavior != pre.end() && (!behavior->is_string() || *behavior != "Isolated")) {
      return Invalid("only Split behavior Isolated is supported");
    }
    const auto invert = pre.find("invert");
    if (invert != pre.end() && invert->is_boolean() && invert->get<bool>()) {
      return Invalid("Split with invert=true is not supported");
    }
    return regex->get<std::string>();
  }
  return Invalid(absl::StrCat("unsupported pre_tokenizer type ", type->dump()));
}

// Splits one merges entry into its two parts.
absl::Status MergeParts(const json& entry, std::string* left, std::string* right) {
  if (entry.is_string()) {
    const std::string& s = entry.get_ref<const std::string&>();
    const size_t space = s.find(' ');
    if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
      return Invalid(absl::StrCat("merge \"", s, "\" is not two parts separated by a space"));
    }
    *left = s.substr(0, space);
    *right = s.substr(space + 1);
    return absl::OkStatus();
  }
  if (entry.is_array() && entry.size() == 2 && entry[0].is_string() && entry[1].is_string()) {
    *left = entry[0].get<std::string>();
    *right = entry[1].get<std::string>();
    return absl::OkStatus();
  }
  return Invalid(absl::StrCat("merge ", entry.dump(), " is neither \"a b\" nor [a, b]"));
}

bool IsEmptyOrNull(const json& model, const char* key) {
  const auto it = model.find(key);
  return it == model.end() || it->is_null() || (it->is_string() && it->get<std::string>().empty());
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromModelDir(const std::filesystem::path& dir) {
  const std::filesystem::path path = dir / "tokenizer.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path.string()));
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read ", path.string()));
  auto tokenizer = FromJson(buffer.str());
  if (!tokenizer.ok()) {
    return absl::Status(tokenizer.status().code(),
                        absl::StrCat(path.string(), ": ", tokenizer.status().message()));
  }
  return tokenizer;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view tokenizer_json) {
  const json root = json::parse(tokenizer_json, /*cb=*/nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return Invalid("not valid JSON");
  if (!root.is_object()) return Invalid("top level is not an object");

  const auto model_it = root.find("model");
  if (model_it == root.end() || !model_it->is_object()) return Invalid("no model object");
  const json& model = *model_it;
  const auto type = model.find("type");
  if (type != model.end() && (!type->is_string() || *type != "BPE")) {
    return Invalid("model.type is not BPE");
  }
  if (!IsEmptyOrNull(model, "continuing_subword_prefix") || !IsEmptyOrNull(model, "end_of_word_suffix")) {
    return Invalid("BPE subword prefixes/suffixes are not supported");
  }
  const auto vocab = model.find("vocab");
  const auto merges = model.find("merges");
  if (vocab == model.end() || !vocab->is_object()) return Invalid("model.vocab is not an object");
  if (merges == model.end() || !merges->is_array()) return Invalid("model.merges is not an array");

  auto tok = std::unique_ptr<Tokenizer>(new Tokenizer());

  // Normalizer: NFC or none.
  if (const auto norm = root.find("normalizer"); norm != root.end() && !norm->is_null()) {
    const auto norm_type = norm->is_object() ? norm->find("type") : norm->end();
    if (norm_type == norm->end() || !norm_type->is_string() || *norm_type != "NFC") {
      return Invalid("only the NFC normalizer is supported");
    }
    tok->nfc_ = true;
  }

  const auto pre = root.find("pre_tokenizer");
  ASSIGN_OR_RETURN(std::string pattern, FindSplitPattern(pre == root.end() ? json() : *pre));
  if (pattern.empty()) return Invalid("no Split regex pre-tokenizer found");
  auto splitter = RegexSplitter::Create(pattern);
  if (!splitter.ok()) return Invalid(StdView(splitter.status().message()));
  tok->splitter_ = *std::move(splitter);

  // Vocab and added tokens, and the id space they span.
  int64_t max_id = -1;
  for (const auto& [token, id] : vocab->items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= (1 << 30)) {
      return Invalid(absl::StrCat("vocab id of \"", token, "\" is not a small non-negative integer"));
    }
    max_id = std::max(max_id, id.get<int64_t>());
  }
  const auto added = root.find("added_tokens");
  if (added != root.end() && !added->is_null() && !added->is_array()) {
    return Invalid("added_tokens is not an array");
  }
  if (added != root.end() && added->is_array()) {
    for (const json& a : *added) {
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") ||
          !a["content"].is_string() || a["content"].get<std::string>().empty() ||
          a["id"].get<int64_t>() < 0 || a["id"].get<int64_t>() >= (1 << 30)) {
        return Invalid(absl::StrCat("malformed added token ", a.dump()));
      }
      max_id = std::max(max_id, a["id"].get<int64_t>());
    }
  }
  const size_t n = static_cast<size_t>(max_id + 1);
  tok->tokens_.resize(n);
  tok->token_bytes_.resize(n);
  tok->present_.assign(n, false);
  tok->special_.assign(n, false);

  const ByteLevelAlphabet& alphabet = ByteLevelAlphabet::Get();
  tok->vocab_.reserve(vocab->size());
  for (const auto& [token, id_json] : vocab->items()) {
    const auto id = static_cast<size_t>(id_json.get<int64_t>());
    if (tok->present_[id]) return Invalid(absl::StrCat("vocab id ", id, " is used twice"));
    std::optional<std::string> bytes = alphabet.Decode(token);
    if (!bytes) {
      return Invalid(absl::StrCat("vocab token \"", token, "\" is not in the byte-level alphabet"));
    }
    tok->tokens_[id] = token;
    tok->token_bytes_[id] = *std::move(bytes);
    tok->present_[id] = true;
    tok->vocab_.emplace(token, static_cast<int32_t>(id));
  }
  for (int b = 0; b < 256; ++b) {
    const auto it = tok->vocab_.find(AbslView(alphabet.Encode(static_cast<uint8_t>(b))));
    if (it == tok->vocab_.end()) {
      return Invalid(absl::StrCat("vocab lacks the token for byte ", b));
    }
    tok->byte_token_id_[b] = it->second;
  }

  if (added != root.end() && added->is_array()) {
    for (const json& a : *added) {
      const auto id = static_cast<size_t>(a["id"].get<int64_t>());
      std::string content = a["content"].get<std::string>();
      const bool special = a.contains("special") && a["special"].is_boolean() && a["special"].get<bool>();
      // The ByteLevel decoder maps a token through the alphabet when every code point is in it,
      // and takes its UTF-8 bytes as they are otherwise (tokenizers decoders/byte_level.rs).
      std::optional<std::string> bytes = alphabet.Decode(content);
      tok->token_bytes_[id] = bytes ? *std::move(bytes) : content;
      tok->tokens_[id] = content;
      tok->present_[id] = true;
      tok->special_[id] = special;
      tok->added_first_byte_[static_cast<uint8_t>(content[0])] = true;
      tok->added_by_content_[content] = static_cast<int32_t>(id);
      tok->added_tokens_.push_back({std::move(content), static_cast<int32_t>(id)});
    }
  }
  std::stable_sort(
      tok->added_tokens_.begin(), tok->added_tokens_.end(),
      [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });

  tok->merges_.reserve(merges->size());
  std::string left, right;
  int32_t rank = 0;
  for (const json& entry : *merges) {
    RETURN_IF_ERROR(MergeParts(entry, &left, &right));
    const auto l = tok->vocab_.find(left);
    const auto r = tok->vocab_.find(right);
    const auto m = tok->vocab_.find(left + right);
    if (l == tok->vocab_.end() || r == tok->vocab_.end() || m == tok->vocab_.end()) {
      return Invalid(absl::StrCat("merge \"", left, " ", right, "\" uses a token not in the vocab"));
    }
    // The first occurrence wins, as in tokenizers (later duplicates can never fire first).
    tok->merges_.try_emplace(PairKey(l->second, r->second), Merge{rank, m->second});
    ++rank;
  }
  return tok;
}

}  // namespace moe::tokenizer
